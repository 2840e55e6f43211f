"""Fault injection: runs that are killed, interrupted, diverge or get bad input lose nothing.

Each test is one row of the README's "Reliability" table. Runs go through the command line,
as a user's do, so exit codes, messages and the files left behind are what is checked.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_train, run_cli
from omegaconf import OmegaConf
from wandb_offline import offline_runs

from nanolab import ConfigError
from nanolab.launch import RunInfo
from nanolab.train import train

DRIVER = Path(__file__).with_name("kill_driver.py")
# Long enough (200 steps, a checkpoint every 20) that kills land mid-run, short enough for CI.
RUN = [
    *TINY,
    "trainer.max_iters=200",
    "trainer.eval_interval=20",
    "model.dropout=0.1",
    "logger.mode=disabled",
]
COMPARED = ("train/loss", "train/grad_norm", "val/ce", "val/acc", "train_eval/ce")


def records(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the status markers an interruption leaves."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "status" not in r]


def assert_same_history(run_dir: Path, reference: Path) -> None:
    got, want = records(run_dir), records(reference)
    assert [r["step"] for r in got] == [r["step"] for r in want], "duplicated or missing steps"
    for a, b in zip(got, want):
        for key in COMPARED:
            if key in b:
                assert a[key] == pytest.approx(b[key], abs=1e-6), (b["step"], key)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same run, never interrupted."""
    run_dir = tmp_path_factory.mktemp("reference")
    run_cli(*RUN, f"hydra.run.dir={run_dir}", cwd=run_dir)
    return run_dir


def start(run_dir: Path, *extra: str, driver_kill_on_save: int | None = None) -> subprocess.Popen:
    args = [*RUN, f"hydra.run.dir={run_dir}", "resume=true", *extra]
    if driver_kill_on_save is None:
        cmd = [sys.executable, "-m", "nanolab.train", *args]
    else:
        cmd = [sys.executable, str(DRIVER), str(driver_kill_on_save), *args]
    return subprocess.Popen(
        cmd, cwd=run_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            lines = (run_dir / "metrics.jsonl").read_text().splitlines()
            if lines and json.loads(lines[-1])["step"] >= step:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.002)
    raise AssertionError(f"run ended (exit {proc.returncode}) or stalled before step {step}")


def test_sigkill_at_random_moments_then_resume_matches_uninterrupted_run(tmp_path, reference):
    rng = random.Random(2024)
    kills = []
    for _ in range(2):  # SIGKILL from outside at random steps (between or during steps)
        proc = start(tmp_path)
        kill_at = rng.randint(5, 190)
        wait_for_step(proc, tmp_path, kill_at)
        proc.kill()
        assert proc.wait() == -signal.SIGKILL
        kills.append(kill_at)
    # SIGKILL halfway through writing this process's first checkpoint (last.pt)
    proc = start(tmp_path, driver_kill_on_save=1)
    assert proc.wait(timeout=300) == -signal.SIGKILL, proc.stdout.read()
    last = torch.load(tmp_path / "last.pt", weights_only=True)  # the previous one, intact
    assert last["step"] % 20 == 0
    proc = start(tmp_path)
    assert proc.wait(timeout=300) == 0, proc.stdout.read()

    assert_same_history(tmp_path, reference)
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "finished"
    assert not list(tmp_path.glob(".*.tmp*")), "a torn temporary file was left behind"
    print("killed at steps", kills, "and during a checkpoint write")


def test_a_second_run_into_a_live_runs_directory_is_refused_and_the_first_goes_on(tmp_path):
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nanolab.train",
            *RUN,
            "trainer.max_iters=100000",
            "trainer.eval_interval=100000",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_step(first, tmp_path, 3)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / ".hydra").iterdir()}
    second = run_cli(
        *RUN, f"hydra.run.dir={tmp_path}", "resume=true", "seed=2", cwd=tmp_path, check=False
    )
    assert (
        second.returncode == 2 and f"is in use by another run (pid {first.pid} on" in second.stderr
    )
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / ".hydra").iterdir()} == before, (
        "the live run's record was touched"
    )
    assert first.poll() is None, "the first run stopped"
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 143
    assert not (tmp_path / "run.lock").exists(), "the lock outlived its run"


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    proc = start(tmp_path)
    wait_for_step(proc, tmp_path, 3)
    proc.kill()
    proc.wait()
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == proc.pid
    proc = start(tmp_path, "trainer.max_iters=30")
    assert proc.wait(timeout=300) == 0, proc.stdout.read()
    assert "taking it over" in proc.stdout.read()


def test_a_fresh_run_into_a_directory_holding_a_run_is_refused_before_anything_is_touched(tmp_path):
    run_cli(
        *TINY,
        "trainer.max_iters=4",
        "trainer.eval_interval=2",
        "logger.mode=disabled",
        f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
    )
    before = {p.relative_to(tmp_path): p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    proc = run_cli(
        *TINY,
        "trainer.max_iters=8",
        "logger.mode=disabled",
        f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"hydra.run.dir={tmp_path} already holds a run (finished); continue "
        "it with resume=true, or start a new one in another hydra.run.dir"
    )
    assert {p.relative_to(tmp_path): p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_runs_launched_in_the_same_second_get_their_own_directories(monkeypatch):
    from nanolab.launch import launch_id

    ids = set()
    for pid in (101, 102):
        monkeypatch.setattr(os, "getpid", lambda pid=pid: pid)
        ids.add(launch_id())
    assert len(ids) == 2
    cfg = compose_train(return_hydra_config=True)
    assert "${launch_id:}" in OmegaConf.to_container(cfg.hydra.run, resolve=False)["dir"]
    # Every process of one launch shares it: several nodes name it by NANOLAB_LAUNCH_TIME.
    monkeypatch.setenv("NANOLAB_LAUNCH_TIME", "1700000000")
    assert len({launch_id(), launch_id()}) == 1


def test_resume_refuses_changed_settings_unless_allowed_and_keeps_every_segments_record(tmp_path):
    run = [*TINY, "trainer.eval_interval=2", "logger.mode=disabled", f"hydra.run.dir={tmp_path}"]
    run_cli(*run, "trainer.max_iters=2", cwd=tmp_path)
    record = {p.name: p.read_text() for p in (tmp_path / ".hydra").iterdir()}
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    proc = run_cli(
        *run,
        "trainer.max_iters=4",
        "resume=true",
        "loss=mse",
        "optim.lr=3e-3",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
        f"resume from {tmp_path}/last.pt would change what the run computes: "
    )
    for diff in (
        "loss.name: checkpoint 'ce' vs now 'mse'",
        "optim.lr: checkpoint 0.01 vs now 0.003",
        "allow_changes=[loss.M,loss.k,loss.name,optim.lr]",
    ):
        assert diff in proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before, (
        "a refused resume touched the run"
    )
    run_cli(
        *run,
        "trainer.max_iters=4",
        "resume=true",
        "optim.lr=3e-3",
        "allow_changes=[optim.lr]",
        cwd=tmp_path,
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["resume/changes"] == [
        "step 2: optim.lr: 0.01 -> 0.003"
    ]
    assert {
        p.name: p.read_text() for p in (tmp_path / ".hydra").iterdir() if p.is_file()
    } == record, "the first segment's record was overwritten"
    assert "optim.lr=3e-3" in (tmp_path / ".hydra" / "resume-1" / "overrides.yaml").read_text()


def test_bookkeeping_across_segments(tmp_path, caplog):
    run = [*TINY, "trainer.eval_interval=2", "logger.mode=disabled", f"hydra.run.dir={tmp_path}"]
    run_cli(*run, "trainer.max_iters=4", cwd=tmp_path)
    first_wall = json.loads((tmp_path / "summary.json").read_text())["wall_time_s"]
    run_cli(*run, "trainer.max_iters=8", "resume=true", cwd=tmp_path)
    times = [r["time_s"] for r in records(tmp_path)]
    assert times == sorted(times), "time_s went back at the resume"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["wall_time_s"] >= max(times) >= times[0] and summary["wall_time_s"] > first_wall
    # Relaunching a finished run (a whole sweep relaunched with resume=true) changes nothing.
    before = {p.relative_to(tmp_path): p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    proc = run_cli(*run, "trainer.max_iters=8", "resume=true", cwd=tmp_path)
    assert f"{tmp_path} already finished at step 8" in proc.stdout
    assert {p.relative_to(tmp_path): p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_warmup_longer_than_the_run_is_named(tmp_path, caplog):
    train(
        compose_train(
            *TINY, "logger.mode=disabled", "trainer.max_iters=3", "trainer.eval_interval=3"
        ),
        RunInfo(dir=tmp_path, group=None, name=None),
    )
    assert "schedule.warmup_iters=5 is not shorter than trainer.max_iters=3" in caplog.text


SAMPLE_BAD = [
    ("top_k=0", "top_k=0 must be >= 1, or null to sample among all tokens"),
    ("seed=1.5", "seed=1.5 must be an integer"),
    ("num_samples=abc", "num_samples='abc' must be an integer"),
    (
        "prompt=FILE:/nonexistent/prompt.txt",
        "prompt=FILE:/nonexistent/prompt.txt cannot be "
        "read as UTF-8 text (No such file or directory)",
    ),
]


@pytest.mark.parametrize("override,message", SAMPLE_BAD, ids=[o for o, _ in SAMPLE_BAD])
def test_bad_sampling_input_is_one_line_and_exit_2(tmp_path, override, message):
    checkpoint = Path(__file__).parents[1] / "data" / "checkpoint_507db7a.pt"
    proc = run_cli(
        f"checkpoint={checkpoint}", override, cwd=tmp_path, module="nanolab.sample", check=False
    )
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], lines


SIGNAL_DRIVER = Path(__file__).with_name("signal_driver.py")


@pytest.mark.parametrize("during_save,code", [(1, 143), (2, 130)])
def test_signals_during_the_stop_checkpoint_are_noted_and_a_third_aborts(
    tmp_path, during_save, code
):
    """A second SIGTERM (a scheduler and torchrun may each send one) lands while the stop
    checkpoint is written: it must still be written. A third aborts without it, saying so."""
    args = [
        *RUN,
        "trainer.max_iters=100000",
        "trainer.eval_interval=100000",
        f"hydra.run.dir={tmp_path}",
    ]
    proc = subprocess.Popen(
        [sys.executable, str(SIGNAL_DRIVER), str(during_save), *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for_step(proc, tmp_path, 5)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == code, out
    assert "Traceback" not in out and "already stopping" in out
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "interrupted"
    if during_save == 1:
        assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] >= 5
    else:
        assert "aborted without a checkpoint" in out and not (tmp_path / "last.pt").exists()


@pytest.mark.parametrize("sig,logger", [(signal.SIGTERM, "offline"), (signal.SIGINT, "disabled")])
def test_sigterm_and_sigint_checkpoint_the_current_step_and_resume(
    tmp_path, reference, sig, logger
):
    proc = start(tmp_path, f"logger.mode={logger}")
    wait_for_step(proc, tmp_path, 33)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == 128 + sig
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    stopped_at = torch.load(tmp_path / "last.pt", weights_only=True)["step"]
    marker = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert marker == {**marker, "step": stopped_at, "status": "interrupted"}
    assert stopped_at >= 33, (
        "the checkpoint is of the current step, not of the last evaluation (20)"
    )

    proc = start(tmp_path, f"logger.mode={logger}")
    assert proc.wait(timeout=300) == 0, proc.stdout.read()
    assert_same_history(tmp_path, reference)
    assert '"status"' not in (tmp_path / "metrics.jsonl").read_text(), (
        "a stale interrupted line stayed"
    )
    if logger == "offline":
        runs = offline_runs(tmp_path / "wandb")
        assert len(runs) == 2 and runs[0]["id"] == runs[1]["id"], (
            "the resumed run continues the same W&B run"
        )


def _train_tiny(tmp_path: Path, *extra: str) -> Path:
    run_cli(
        *TINY,
        "trainer.max_iters=4",
        "trainer.eval_interval=2",
        "logger.mode=disabled",
        f"hydra.run.dir={tmp_path}/ok",
        *extra,
        cwd=tmp_path,
    )
    return tmp_path / "ok" / "last.pt"


def _config_error(tmp_path: Path, *overrides: str) -> str:
    """Train with overrides in-process; it must raise ConfigError before writing anything."""
    out = tmp_path / "in-process"
    with pytest.raises(ConfigError) as err:
        train(
            compose_train(*TINY, "logger.mode=offline", *overrides),
            RunInfo(dir=out, group=None, name=None),
        )
    assert not out.exists() or not any(out.iterdir()), f"partial files left: {list(out.iterdir())}"
    return str(err.value)


def _cli_error(tmp_path: Path, *args: str) -> str:
    """Run the command line with args; it must fail early with exit 2, one clear message and no
    traceback, and leave nothing but Hydra's own record of the run."""
    out = tmp_path / "out"
    proc = run_cli(
        *TINY, "logger.mode=offline", f"hydra.run.dir={out}", *args, cwd=tmp_path, check=False
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text
    assert "Traceback" not in text
    left = {p.name for p in out.iterdir()} if out.exists() else set()
    assert left <= {".hydra", "train.log"}, f"partial files left: {left}"
    return text


def test_truncated_or_foreign_checkpoint_is_named(tmp_path):
    good = _train_tiny(tmp_path)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    for path, message in [
        (truncated, "unreadable"),
        (garbage, "unreadable"),
        (foreign, "not a nanolab checkpoint"),
    ]:
        text = _config_error(tmp_path, f"resume={path}")
        assert str(path) in text and message in text


def test_incompatible_checkpoint_names_the_mismatch(tmp_path):
    good = _train_tiny(tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in good.parent.iterdir()}
    text = _cli_error(tmp_path, f"resume={good}", "model.n_layer=3")
    assert "n_layer: checkpoint 2 vs now 3" in text and str(good) in text
    assert {p.name: p.stat().st_mtime_ns for p in good.parent.iterdir()} == before, (
        "the run resumed from was touched"
    )
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abcdefgh " * 400)
    data = ["data=text", f"data.path={corpus}", f"data.dir={tmp_path}/d"]
    text = _config_error(tmp_path, f"resume={good}", *data)
    # strict resume speaks first
    assert "data.name: checkpoint 'shakespeare_char' vs now 'text'" in text
    text = _config_error(
        tmp_path,
        f"resume={good}",
        *data,
        "allow_changes=[data.name,data.source,data.tokenizer,data.path]",
    )
    assert "vocab_size: checkpoint 65 vs now 9" in text


@pytest.mark.parametrize("log_interval", [1, 7])
def test_divergence_stops_with_status_and_exit_code(tmp_path, log_interval):
    proc = run_cli(
        *TINY,
        "loss=mse",
        "optim.lr=1e5",
        "schedule.warmup_iters=0",
        "trainer.max_iters=50",
        f"trainer.log_interval={log_interval}",
        "logger.mode=offline",
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert (
        "non-finite" in proc.stdout + proc.stderr and "Traceback" not in proc.stdout + proc.stderr
    )
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged"
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["status"] == "diverged" and last["step"] < 50
    assert last["step"] % log_interval == 0, "stop looks at log steps, not every step"
    assert (
        not (tmp_path / "run" / "last.pt").exists()
        or torch.isfinite(
            torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]["lm_head.weight"]
        ).all()
    )
    (run,) = offline_runs(tmp_path / "run")
    assert run["summary"]["status"] == "diverged"


def test_skip_step_keeps_the_weights_finite(tmp_path):
    run_cli(
        *TINY,
        "loss=mse",
        "optim.lr=1e5",
        "schedule.warmup_iters=0",
        "trainer.max_iters=20",
        "trainer.eval_interval=10",
        "trainer.on_nonfinite=skip_step",
        "logger.mode=disabled",
        f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
    )
    skipped = [r["train/skipped_steps"] for r in records(tmp_path) if "train/skipped_steps" in r]
    assert skipped and skipped[-1] >= 1
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "finished"


def test_sweep_runs_every_job_and_reports_failed_and_diverged_ones(tmp_path):
    proc = run_cli(
        "-m",
        "loss=mse",
        "optim.lr=0.01,1e5,-1",
        "schedule.warmup_iters=0",
        *TINY[:-2],
        "trainer.max_iters=10",
        "trainer.eval_interval=5",
        "logger.mode=disabled",
        f"hydra.sweep.dir={tmp_path}/sweep",
        cwd=tmp_path,
        check=False,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    statuses = {
        d.name.split(",")[0]: json.loads((d / "summary.json").read_text())["status"]
        for d in (tmp_path / "sweep").iterdir()
        if d.is_dir()
    }
    assert statuses == {"0_loss=mse": "finished", "1_loss=mse": "diverged", "2_loss=mse": "failed"}
    assert "2 of 3 jobs did not finish" in text and "optim.lr=-1 must be > 0" in text


def test_unreachable_wandb_falls_back_to_offline_and_training_goes_on(tmp_path):
    env = {**os.environ, "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nanolab.train",
            *TINY,
            "trainer.max_iters=4",
            "trainer.eval_interval=2",
            "logger.mode=online",
            "logger.init_timeout=5",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "W&B could not start in online mode" in proc.stdout + proc.stderr
    (run,) = offline_runs(tmp_path)
    assert [h["step"] for h in run["history"] if "val/ce" in h] == [0, 2, 4]


BAD_INPUTS = [
    (["model.n_head=3"], "model.n_embd=32 must be divisible by model.n_head=3"),
    (["model.n_layer=0"], "model.n_layer=0 must be > 0"),
    (["model.block_size=200000"], "too few for model.block_size=200000"),
    (
        ["model.block_size=100000", "trainer.batch_size=1000"],
        "model.block_size=100000 with trainer.batch_size=1000 needs at least",
    ),
    (["trainer.batch_size=0"], "trainer.batch_size=0 must be > 0"),
    (["trainer.max_iters=-5"], "trainer.max_iters=-5 must be > 0"),
    (["trainer.eval_interval=0"], "trainer.eval_interval=0 must be > 0"),
    (
        ["trainer.on_nonfinite=ignore"],
        "trainer.on_nonfinite='ignore' must be one of stop, skip_step",
    ),
    (["optim.lr=0"], "optim.lr=0 must be > 0"),
    (["optim.fused=maybe"], "optim.fused='maybe' must be auto, true or false"),
    (["compile=sometimes"], "compile='sometimes' must be auto, true or false"),
    (["cpu_keep_freed_memory=maybe"], "cpu_keep_freed_memory='maybe' must be true or false"),
    (["head_chunk_tokens=-8"], "head_chunk_tokens=-8 must be auto, 0"),
    (["objective=val/acc"], "objective='val/acc' must be one of val/ce, val/ce_calibrated"),
    (["trainer.grad_accum=0"], "trainer.grad_accum=0 must be > 0"),
    (["loss=label_smoothing", "loss.epsilon=1.0"], "loss.epsilon=1.0 must lie in [0, 1)"),
    (["loss=label_smoothing", "loss.epsilon=-0.1"], "loss.epsilon=-0.1 must lie in [0, 1)"),
    (["loss=mse", "loss.k=0"], "loss.k=0 must be > 0"),
    (["loss=mse", "loss.M=-2"], "loss.M=-2 must be > 0"),
    (["device=cuda"], "CUDA is not available"),
    (["dtype=float64"], "dtype='float64' must be one of auto, float32, bfloat16, float16"),
    (
        ["logger.mode=sometimes"],
        "logger.mode='sometimes' must be one of auto, online, offline, disabled",
    ),
    (["resume=/nonexistent/last.pt"], "checkpoint /nonexistent/last.pt does not exist"),
]


@pytest.mark.parametrize("overrides,message", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_fails_early_and_clearly(tmp_path, overrides, message):
    assert message in _config_error(tmp_path, *overrides)


@pytest.mark.parametrize(
    "content,message", [(b"", "holds no text"), (b"caf\xe9 au lait", "is not UTF-8 text")]
)
def test_bad_text_file_fails_early_and_prepares_nothing(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    text = _config_error(
        tmp_path, "data=text", f"data.path={path}", f"data.dir={tmp_path}/prepared"
    )
    assert message in text and str(path) in text
    assert not (tmp_path / "prepared").exists() or not any((tmp_path / "prepared").iterdir())


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model.n_head=3"], "model.n_embd=32 must be divisible by model.n_head=3"),
        (
            ["hydra.run.dir=/proc/nanolab_out"],
            "hydra.run.dir=/proc/nanolab_out is not a writable directory",
        ),
        (["hydra.run.dir=${oc.env:NANOLAB_UNSET_VARIABLE}"], "hydra.run.dir cannot be resolved"),
        (
            ["data=text", "data.path=/nonexistent/corpus.txt"],
            "data.path=/nonexistent/corpus.txt does not exist",
        ),
    ],
)
def test_command_line_reports_bad_input_in_one_line_with_exit_code_2(tmp_path, overrides, message):
    assert message in _cli_error(tmp_path, *overrides)


def test_unknown_group_option_lists_the_choices(tmp_path):
    proc = run_cli("loss=hinge", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "Could not find 'loss/hinge'" in proc.stderr and "label_smoothing" in proc.stderr


def test_unusable_wandb_directory_warns_and_training_goes_on(tmp_path):
    (tmp_path / "wandb").touch()  # W&B cannot make its directory (root ignores permissions)
    proc = run_cli(
        *TINY,
        "trainer.max_iters=4",
        "trainer.eval_interval=2",
        "logger.mode=offline",
        f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
    )
    assert "continuing without W&B" in proc.stdout + proc.stderr
    assert [r["step"] for r in records(tmp_path) if "val/ce" in r] == [0, 2, 4]
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "finished"


def test_a_cpu_shared_with_a_busy_process_is_named_once():
    from nanolab.trainer import SlowdownWatch

    watch = SlowdownWatch()
    quiet = [90.0, 40.0, 41.0, 39.0, 40.0, 42.0]  # the first interval warms up
    # spikes are not sustained
    assert [watch.observe(ms) for ms in [*quiet, 41, 120, 40, 130, 125]] == [None] * 11
    warnings = [watch.observe(ms) for ms in [118, 140, 131, 126, 122, 150, 160]]
    # five intervals in a row at twice the early median (40 ms): from 130, 125, 118, 140, 131 on
    assert [w is not None for w in warnings] == [False, False, True, False, False, False, False]
    assert (
        "steps take 130 ms against 40 ms early in this run" in warnings[2]
        and "threads=1" in warnings[2]
    )


def test_threads_setting_applies_and_bad_values_are_named(tmp_path):
    code = (
        "import torch; from nanolab.runtime import Runtime; "
        "Runtime.create(torch.device('cpu'), threads=1); print(torch.get_num_threads())"
    )
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "1"
    )
    assert "threads=0 must be auto or a number of threads >= 1" in _config_error(
        tmp_path, "threads=0"
    )


def test_evaluate_and_prune_from_any_directory_read_the_runs_own_data(tmp_path, data_root):
    """A run trained in a project with its data in ./data, evaluated and pruned from elsewhere:
    its checkpoint says where its data was prepared. Moved away, the fixes the error names
    (data.dir=, NANOLAB_DATA_DIR) work. Nothing is prepared or written where the command runs."""
    project, elsewhere, moved = tmp_path / "project", tmp_path / "elsewhere", tmp_path / "moved"
    (project / "data" / "shakespeare_char").mkdir(parents=True)
    shutil.copy(data_root / "shakespeare_char" / "input.txt", project / "data" / "shakespeare_char")
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "NANOLAB_DATA_DIR"}

    def cli(module: str, *args: str, cwd: Path, **extra_env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            env=env | extra_env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    assert (
        cli(
            "nanolab.train",
            *TINY,
            "trainer.max_iters=2",
            "trainer.eval_interval=2",
            "logger.mode=disabled",
            f"hydra.run.dir={project}/run",
            cwd=project,
        ).returncode
        == 0
    )
    checkpoint = f"checkpoint={project}/run"
    assert cli("nanolab.evaluate", checkpoint, cwd=elsewhere).returncode == 0
    assert cli("nanolab.prune", checkpoint, "amounts=[0,0.5]", cwd=elsewhere).returncode == 0
    assert (project / "run" / "prune" / "prune.md").is_file() and list(elsewhere.iterdir()) == []
    shutil.move(project / "data", moved)
    failed = cli("nanolab.evaluate", checkpoint, cwd=elsewhere)
    lines = (failed.stdout + failed.stderr).strip().splitlines()
    assert failed.returncode == 2 and "Traceback" not in failed.stderr and len(lines) == 1, lines
    assert (
        "no prepared data for checkpoint=" in lines[0]
        and "give data.dir=<the folder its run prepared>" in lines[0]
    )
    assert (
        cli("nanolab.evaluate", checkpoint, cwd=elsewhere, NANOLAB_DATA_DIR=str(moved)).returncode
        == 0
    )
    assert (
        cli(
            "nanolab.evaluate", checkpoint, f"data.dir={moved}/shakespeare_char", cwd=elsewhere
        ).returncode
        == 0
    )
    assert list(elsewhere.iterdir()) == []
    result = json.loads((project / "run" / "evaluation_val.json").read_text())
    assert result["tokens"] == (111_540 - 1) // 32 * 32


def test_a_relaunched_sweep_without_resume_and_a_second_sweep_at_once_overwrite_nothing(tmp_path):
    """Each job claims its directory as a single run does, and a sweep directory takes one
    sweep at a time: nothing is run twice, truncated or overwritten, and the sweep says so."""
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "loss=ce,mse",
        *TINY,
        "trainer.max_iters=4",
        "trainer.eval_interval=2",
        "logger.mode=disabled",
        f"hydra.sweep.dir={sweep}",
    ]
    both = [
        subprocess.Popen(
            [sys.executable, "-m", "nanolab.train", *args],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=600)[0] for proc in both]
    codes = sorted(proc.returncode for proc in both)
    assert codes == [0, 2], outputs
    refused = outputs[[proc.returncode for proc in both].index(2)]
    assert "is in use by another sweep (pid" in refused and "Traceback" not in refused
    jobs = sorted(d for d in sweep.iterdir() if d.is_dir())
    for job in jobs:
        steps = [r["step"] for r in records(job) if "train/loss" in r]
        assert steps == sorted(set(steps)) == [1, 2, 3, 4], (job, steps)
    kept = {job: snapshot_files(job) for job in jobs}

    proc = run_cli(*args, cwd=tmp_path, check=False)  # relaunched without resume=true
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in text, text
    assert (
        "2 of 2 jobs did not finish" in text
        and text.count("already holds a run (finished); continue it with resume=true") >= 2
    )
    for job in jobs:
        # Hydra's own record (.hydra/resume-1, the log train.log) gains this attempt; the run is
        # untouched.
        hydras = (".hydra", "train.log")
        assert {k: v for k, v in snapshot_files(job).items() if not k.startswith(hydras)} == {
            k: v for k, v in kept[job].items() if not k.startswith(hydras)
        }
        assert (job / ".hydra" / "resume-1" / "refused.json").is_file()
        assert not (job / "run.lock").exists()
    assert not (sweep / "sweep.lock").exists()


def snapshot_files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


LONG_MEASUREMENTS = [
    # 100,000 batches a split: minutes
    (["trainer.eval_iters=100000"], "arrived during an evaluation"),
    (
        ["sharpness.every=1", "sharpness.lanczos_iters=2000", "sharpness.probe_tokens=4096"],
        "arrived during a sharpness measurement",
    ),
]


@pytest.mark.parametrize("long,message", LONG_MEASUREMENTS, ids=["evaluation", "sharpness"])
def test_a_stop_during_a_long_measurement_checkpoints_within_seconds_and_the_resume_evaluates_first(
    tmp_path, long, message
):
    """The step-0 measurement here would take minutes: a SIGTERM abandons it at its next batch
    (or Lanczos step), the stop checkpoint marks the evaluation due, the resumed run does it."""
    args = [*RUN, "trainer.max_iters=4", "trainer.eval_interval=2", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanolab.train", *args, *long],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # the model's description is logged just before the baseline evaluation
    for line in proc.stdout:
        if "M parameters" in line:
            break
    time.sleep(1.0)
    signalled = time.time()
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    elapsed = time.time() - signalled
    assert proc.returncode == 143 and "Traceback" not in out, out
    assert elapsed < 15, f"the stop waited {elapsed:.1f} s"
    assert message in out
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["step"] == 0 and state["eval_due"]
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "interrupted"
    run_cli(*args, "resume=true", cwd=tmp_path)
    evaluated = [r["step"] for r in records(tmp_path) if "val/ce" in r]
    assert evaluated == [0, 2, 4]
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "finished"


def test_a_relaunched_sweep_keeps_each_jobs_first_record(tmp_path):
    """Relaunching a sweep with resume=true (after a preemption) writes each job's Hydra record
    beside the first one; a job that had finished says so and changes nothing else."""
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "loss=ce,mse",
        *TINY,
        "trainer.max_iters=2",
        "trainer.eval_interval=2",
        "logger.mode=disabled",
        f"hydra.sweep.dir={sweep}",
    ]
    run_cli(*args, cwd=tmp_path)
    jobs = sorted(d for d in sweep.iterdir() if d.is_dir())
    first = {job: (job / ".hydra" / "overrides.yaml").read_text() for job in jobs}
    summaries = {job: (job / "summary.json").read_text() for job in jobs}
    proc = run_cli(*args, "resume=true", cwd=tmp_path)
    assert proc.stdout.count("already finished at step 2") == 2
    for job in jobs:
        assert (job / ".hydra" / "overrides.yaml").read_text() == first[
            job
        ] and "resume" not in first[job]
        assert "resume=True" in (job / ".hydra" / "resume-1" / "overrides.yaml").read_text()
        assert (job / "summary.json").read_text() == summaries[job]


def wandb_history(run_dir: Path) -> list[dict]:
    """The metric rows of every W&B segment of a run, read back from its offline files, oldest
    first."""
    return [
        {k: v for k, v in row.items() if not k.startswith("_")}
        for run in offline_runs(run_dir / "wandb")
        for row in run["history"]
    ]


def test_a_killed_and_resumed_run_holds_each_step_once_in_wandb(tmp_path):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    run_cli(*RUN, "logger.mode=offline", f"hydra.run.dir={reference}", cwd=tmp_path)
    resumed.mkdir()
    proc = start(resumed, "logger.mode=offline")
    wait_for_step(proc, resumed, 45)  # two checkpoints (20, 40) and steps past the last one
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    replayed = [r["step"] for r in records(resumed) if r["step"] > 40]
    proc = start(resumed, "logger.mode=offline")
    assert proc.wait(timeout=300) == 0, proc.stdout.read()

    got, want = wandb_history(resumed), wandb_history(reference)
    assert len(offline_runs(resumed / "wandb")) == 2 and replayed, (
        "the kill did not land after the checkpoint"
    )
    identities = [(row["step"], frozenset(row) - {"time_s"}) for row in got]
    assert len(identities) == len(set(identities)), "a step went to W&B twice"
    assert sorted(identities, key=str) == sorted(
        ((r["step"], frozenset(r) - {"time_s"}) for r in want), key=str
    )
    by_identity = {(r["step"], frozenset(r) - {"time_s"}): r for r in want}
    for row in got:
        expected = by_identity[(row["step"], frozenset(row) - {"time_s"})]
        for key in COMPARED:
            if key in row:
                assert row[key] == pytest.approx(expected[key], abs=1e-6), (row["step"], key)


def test_a_slurm_job_at_its_time_limit_is_checkpointed_requeued_and_resumed(tmp_path, reference):
    """submitit sends USR2 before the time limit: nanolab saves the current step, then hands
    the signal to submitit's handler, which requeues the job; the requeued job (the same
    command, SLURM_RESTART_COUNT=1) resumes from last.pt and logs nothing twice."""
    slurm = {
        "SLURM_JOB_ID": "42",
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_LOCALID": "0",
    }
    driver = Path(__file__).with_name("submitit_driver.py")
    proc = subprocess.Popen(
        [sys.executable, str(driver), str(tmp_path), *RUN],
        cwd=tmp_path,
        env=os.environ | slurm,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for_step(proc, tmp_path, 33)
    proc.send_signal(signal.SIGUSR2)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 255, out  # submitit's exit after requeueing
    requeued = json.loads((tmp_path / "requeued.json").read_text())
    stopped_at = torch.load(tmp_path / "last.pt", weights_only=True)["step"]
    assert requeued == {"countdown": 3, "last_pt_step": stopped_at} and stopped_at >= 33, (
        "requeued before the checkpoint of the current step"
    )
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "interrupted"

    run_cli(
        *RUN,
        f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
        env=os.environ | slurm | {"SLURM_RESTART_COUNT": "1"},
    )
    assert_same_history(tmp_path, reference)
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "finished"

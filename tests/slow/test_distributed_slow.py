"""DDP under torchrun on CPU (gloo, 2 processes): two processes train like one accumulating
two micro-batches, resume where they stopped, prepare data once, and save on SIGTERM."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, run_cli
from wandb_offline import offline_runs

# Dropout off: masks are drawn per rank, so they could never match one process's.
COMMON = [
    *TINY,
    "model.dropout=0",
    "trainer.grad_accum=2",
    "trainer.eval_interval=4",
    "logger.mode=offline",
]


def torchrun(*args: str, cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=<nproc> -m nanolab.train <args>` in cwd."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "nanolab.train",
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        raise AssertionError(
            "exit "
            f"{proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
        )
    return proc


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_trajectory(a: list[dict], b: list[dict]) -> None:
    """The same losses within 1e-5 at every step and evaluation. The gradients are the same sums
    in another float32 order ((g0 + g1)/2 after an all-reduce against g0/2 + g1/2), so the
    gradient norm is held to 1e-4 relative."""
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("train/loss", "val/ce", "val/ce_calibrated", "val/loss", "train_eval/ce"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], abs=1e-5), (ra["step"], key)
        if "train/grad_norm" in ra:
            assert rb["train/grad_norm"] == pytest.approx(ra["train/grad_norm"], rel=1e-4), ra[
                "step"
            ]
        if "val/acc" in ra:  # a logit 1e-6 away could flip one argmax: one token of 512
            assert rb["val/acc"] == pytest.approx(ra["val/acc"], abs=2 / 512)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """8 steps of one process with 2 accumulated micro-batches of 8 sequences."""
    run_dir = tmp_path_factory.mktemp("single") / "run"
    run_cli(*COMMON, "trainer.max_iters=8", f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    return run_dir


def test_two_processes_train_like_one_accumulating_two_micro_batches(one_process, tmp_path):
    out = torchrun(*COMMON, "trainer.max_iters=8", cwd=tmp_path)
    # Both processes resolved the same default run directory (launch_time), and only rank 0 wrote.
    run_dirs = list(tmp_path.glob("outputs/*/*"))
    assert len(run_dirs) == 1, run_dirs
    run_dir = run_dirs[0]
    assert_same_trajectory(records(one_process), records(run_dir))
    assert sorted(p.name for p in run_dir.iterdir() if p.suffix != ".log") == [
        ".hydra",
        "best.pt",
        "last.pt",
        "metrics.jsonl",
        "summary.json",
        "wandb",
    ]
    runs = offline_runs(run_dir)
    assert len(runs) == 1 and runs[0]["summary"]["status"] == "finished"
    assert (
        "8 x 32 x 1 micro-batches x 2 processes"
        in out.stdout + out.stderr + (run_dir / "train.log").read_text()
    )
    assert (
        json.loads((run_dir / "summary.json").read_text())["best/val/ce"]
        == records(run_dir)[-1]["val/ce"]
    )


def test_ddp_run_resumes_where_it_stopped(one_process, tmp_path):
    run_dir = tmp_path / "run"
    torchrun(*COMMON, "trainer.max_iters=4", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    torchrun(
        *COMMON, "trainer.max_iters=8", f"hydra.run.dir={run_dir}", "resume=true", cwd=tmp_path
    )
    assert_same_trajectory(records(one_process), records(run_dir))


def test_one_rank_prepares_the_data_while_the_others_wait(tmp_path, data_root):
    """Two ranks preparing one directory at once delete each other's files; one prepares."""
    fresh = tmp_path / "fresh" / "shakespeare_char"
    run_dir = tmp_path / "run"
    torchrun(
        *COMMON,
        "trainer.max_iters=2",
        f"data.dir={fresh}",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    # the bins, their meta and the training counts (frequency bins), and the lock a preparation
    # holds (data.prepare's, kept: removing it would let a process that waits on the old file
    # and one that makes a new one both prepare)
    assert sorted(p.name for p in fresh.iterdir()) == [
        ".prepare.lock",
        "meta.json",
        "train.bin",
        "train_counts.npy",
        "val.bin",
    ]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


def test_sigterm_to_torchrun_saves_a_checkpoint_that_resumes(tmp_path):
    """Preemption: torchrun passes SIGTERM to every rank; they agree to stop at one step, rank 0
    saves last.pt there, and the run resumes from it."""
    import signal
    import time

    import torch

    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "nanolab.train",
        *COMMON,
        "trainer.max_iters=100000",
        "trainer.eval_interval=100000",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (
        (run_dir / "metrics.jsonl").exists() and len(records(run_dir)) > 5
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) != 0
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    step = torch.load(run_dir / "last.pt", weights_only=True)["step"]
    assert step == records(run_dir)[-1]["step"] > 0
    torchrun(
        *COMMON,
        f"trainer.max_iters={step + 2}",
        f"hydra.run.dir={run_dir}",
        "resume=true",
        cwd=tmp_path,
    )
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    assert [r["step"] for r in records(run_dir) if "train/loss" in r][-3:] == [
        step,
        step + 1,
        step + 2,
    ]


# Gradual pruning to half of the linear weights by step 6, and both penalties.
SPARSE = [
    "sparsity.final=0.5",
    "sparsity.start=2",
    "sparsity.end=6",
    "sparsity.every=2",
    "sparsity.l1=1e-4",
    "sparsity.group_lasso=1e-4",
]


def test_sparse_training_under_ddp_trains_like_one_process(tmp_path):
    single = tmp_path / "single"
    run_cli(*COMMON, *SPARSE, "trainer.max_iters=8", f"hydra.run.dir={single}", cwd=tmp_path)
    torchrun(
        *COMMON, *SPARSE, "trainer.max_iters=8", f"hydra.run.dir={tmp_path / 'ddp'}", cwd=tmp_path
    )
    a, b = records(single), records(tmp_path / "ddp")
    assert_same_trajectory(a, b)
    penalties = [
        (r["train/penalty"], s["train/penalty"]) for r, s in zip(a, b) if "train/penalty" in r
    ]
    assert len(penalties) == 8 and all(x == pytest.approx(y, rel=1e-5) for x, y in penalties)
    assert [r["sparsity/actual"] for r in b if "sparsity/actual" in r][-1] == pytest.approx(
        0.5, abs=1e-3
    )

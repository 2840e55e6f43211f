"""Training end to end: configs compose, every loss learns, runs resume exactly, the CLI,
multirun and W&B offline runs behave as a user relies on."""

import gc
import json
import math
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch
from conftest import REPO, TINY, compose_train, run_cli
from hydra import compose, initialize_config_module

from nanolab import ConfigError
from nanolab.config import check_config
from nanolab.launch import RunInfo
from nanolab.losses import LOSSES
from nanolab.runtime import use_compile
from nanolab.train import train

GROUPS = ["model", "data", "loss", "optim", "schedule", "logger", "experiment", "hparams_search"]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_in_process(run_dir: Path, *overrides: str) -> float:
    cfg = compose_train(*TINY, "logger.mode=disabled", *overrides)
    return train(cfg, RunInfo(dir=run_dir, group=None, name=None))


@pytest.mark.parametrize("group", GROUPS)
def test_every_config_composes(group):
    for path in sorted((REPO / "configs" / group).glob("*.yaml")):
        cfg = compose_train(f"{group}={path.stem}")
        # names the weights it starts from: the user's
        if (group, path.stem) == ("experiment", "finetune_shakespeare"):
            with pytest.raises(ConfigError, match="pretrained: no value given"):
                check_config(cfg)
            continue
        check_config(cfg)  # every value in range, every key known


def test_the_batch_size_experiment_caps_tokens_with_a_floor_of_steps():
    """4M tokens, but at least 512 steps (the `max` and `div` resolvers)."""
    for batch, steps in ((2, 16384), (32, 1024), (128, 512)):
        cfg = compose_train("experiment=batch_size", f"trainer.batch_size={batch}")
        assert (cfg.trainer.max_iters, cfg.trainer.eval_interval) == (steps, 1024 // batch)


def test_default_compiles_on_cuda_only():
    default = compose_train().compile
    assert use_compile(default, torch.device("cuda")) and not use_compile(
        default, torch.device("cpu")
    )
    assert use_compile(True, torch.device("cpu")) and not use_compile(False, torch.device("cuda"))


def test_the_speedrun_reference_is_nanogpts_cpu_quick_start():
    """scripts/speedrun_check.sh's reference keeps nanoGPT's settings (its README's CPU command
    on config/train_shakespeare_char.py) whatever nanolab's defaults become."""
    cfg = compose_train("experiment=nanogpt_quickstart")
    model, trainer, optim, schedule = cfg.model, cfg.trainer, cfg.optim, cfg.schedule
    assert (model.n_layer, model.n_head, model.n_embd, model.block_size) == (4, 4, 128, 64)
    assert (model.dropout, model.bias, model.position) == (0.0, False, "learned")
    assert (trainer.max_iters, trainer.batch_size, trainer.grad_accum) == (2000, 12, 1)
    assert (trainer.eval_interval, trainer.eval_iters, trainer.grad_clip) == (250, 20, 1.0)
    assert (optim.name, optim.lr, optim.weight_decay, list(optim.betas)) == (
        "adamw",
        1e-3,
        0.1,
        [0.9, 0.99],
    )
    assert (schedule.name, schedule.warmup_iters, schedule.min_lr) == ("cosine", 100, 1e-4)
    assert schedule.decay_iters == 2000 and cfg.logger.mode == "disabled"


def test_the_command_line_runs_main_then_freezes_what_survives_for_a_quick_exit(monkeypatch):
    """nanolab-train and python -m nanolab.train: main's work first, then gc.freeze(), so that
    Python's exit does not walk every object torch created."""
    import nanolab.train as entry

    frozen = []
    monkeypatch.setattr(entry, "main", lambda: frozen.append(gc.get_freeze_count()))
    before = gc.get_freeze_count()
    try:
        entry.cli()
        assert frozen == [before] and gc.get_freeze_count() > before
    finally:
        gc.unfreeze()
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["nanolab-train"] == "nanolab.train:cli"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc malloc setting")
def test_large_cpu_temporaries_reuse_memory_instead_of_faulting_it_in_again():
    # A logits-sized temporary at GPT-2's vocabulary: 150 MB, 37,700 pages. In a fresh process,
    # since the setting is process-wide, holding what a training process imports: in a bare
    # interpreter the few small allocations made between two temporaries are carved out of the
    # freed 150 MB block itself, so the next one no longer fits there (measured: 4 of 5 fault).
    code = """
import resource, torch
import nanolab.trainer
from nanolab.runtime import keep_freed_memory_for_reuse
keep_freed_memory_for_reuse(True, torch.device("cpu"))
def page_faults_of_a_temporary():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(768, 50257).sum()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print([page_faults_of_a_temporary() for _ in range(3)][-1])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) < 1000


def test_sample_and_evaluate_configs_compose():
    with initialize_config_module("nanolab.configs", version_base="1.3"):
        assert compose("sample", overrides=["checkpoint=x.pt"]).num_samples == 3
        assert compose("evaluate", overrides=["checkpoint=x.pt"]).split == "val"


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_thirty_steps_lower_val_ce(tmp_path, loss):
    run_in_process(tmp_path, f"loss={loss}", "trainer.max_iters=30", "trainer.eval_interval=30")
    evals = [r for r in records(tmp_path) if "val/ce" in r]
    assert [r["step"] for r in evals] == [0, 30]
    assert evals[0]["val/ce"] == pytest.approx(math.log(65), abs=0.05)  # untrained: uniform
    # Square-loss logits are not log-probabilities, so its val/ce falls slowly at first; the
    # objective it optimises must fall clearly, and val/ce must fall for every loss.
    assert evals[1]["val/ce"] < evals[0]["val/ce"] - 0.02
    assert evals[1]["val/loss"] < 0.97 * evals[0]["val/loss"]  # brier lives on a compressed scale
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["best/val/ce"] == evals[1]["val/ce"]
    for key in ("loss", "ce", "ppl", "bpt", "acc"):
        assert f"val/{key}" in evals[1] and f"train_eval/{key}" in evals[1]


def test_resumed_run_matches_uninterrupted_run(tmp_path):
    common = ["trainer.eval_interval=10", "schedule.decay_iters=40", "model.dropout=0.1"]
    run_in_process(tmp_path / "straight", "trainer.max_iters=40", *common)
    run_in_process(tmp_path / "resumed", "trainer.max_iters=20", *common)
    assert (tmp_path / "resumed" / "last.pt").exists()
    run_in_process(
        tmp_path / "elsewhere", "trainer.max_iters=40", f"resume={tmp_path / 'resumed'}", *common
    )

    straight, resumed = records(tmp_path / "straight"), records(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == [r["step"] for r in straight]  # no duplicated steps
    for a, b in zip(straight, resumed):
        for key in ("train/loss", "val/ce", "train_eval/ce"):
            if key in a:
                assert b[key] == pytest.approx(a[key], abs=1e-6), (a["step"], key)
    assert not (tmp_path / "elsewhere" / "metrics.jsonl").exists()
    summaries = [
        json.loads((tmp_path / d / "summary.json").read_text()) for d in ("straight", "resumed")
    ]
    assert summaries[1]["best/val/ce"] == pytest.approx(summaries[0]["best/val/ce"], abs=1e-6)
    assert summaries[1]["best/step"] == summaries[0]["best/step"]


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_chunked_head_trains_like_the_whole_head(tmp_path, loss):
    """head_chunk_tokens changes memory, not results: the same losses, gradient norms and
    evaluation metrics (float32 sums in another order: 1e-5; a few steps only, since float32
    rounding differences grow as any two float32 trainings drift apart)."""
    common = [f"loss={loss}", "trainer.max_iters=6", "trainer.eval_interval=3"]
    run_in_process(tmp_path / "whole", "head_chunk_tokens=0", *common)
    # 256 tokens: 5 full chunks + 16
    run_in_process(tmp_path / "chunked", "head_chunk_tokens=48", *common)
    whole, chunked = records(tmp_path / "whole"), records(tmp_path / "chunked")
    assert [r["step"] for r in whole] == [r["step"] for r in chunked]
    for a, b in zip(whole, chunked):
        for key in (
            "train/loss",
            "train/grad_norm",
            "val/ce",
            "val/loss",
            "val/acc",
            "val/ce_calibrated",
        ):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5), (a["step"], key)


def test_resume_true_without_checkpoint_starts_fresh(tmp_path):
    run_in_process(tmp_path, "trainer.max_iters=2", "resume=true")
    assert records(tmp_path)[-1]["step"] == 2


def test_sample_from_trained_checkpoint(tmp_path):
    run_in_process(tmp_path, "trainer.max_iters=5")
    out = run_cli(
        f"checkpoint={tmp_path}",
        "prompt=ROMEO:",
        "num_samples=2",
        "max_new_tokens=30",
        cwd=tmp_path,
        module="nanolab.sample",
    )
    samples = out.stdout.split("-" * 40)
    assert len([s for s in samples if s.strip()]) == 2
    assert all(
        s.strip().startswith("ROMEO:") and len(s.strip()) == 36 for s in samples if s.strip()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["best.pt", "last.pt", "metrics.jsonl", "summary.json"]
    )


def test_job_directory_names_stay_valid_file_names():
    from nanolab.launch import safe_dirname

    assert safe_dirname("loss=mse,optim.lr=0.001") == "loss=mse,optim.lr=0.001"
    assert "/" not in safe_dirname("data.path=/home/me/corpus.txt")
    long_a, long_b = "x=1," + "model.n_layer=2," * 30, "x=2," + "model.n_layer=2," * 30
    assert len(safe_dirname(long_a)) == 120 and safe_dirname(long_a) != safe_dirname(long_b)


def test_evaluate_scores_every_val_token_of_a_checkpoint(tmp_path, data_root):
    run_in_process(tmp_path, "trainer.max_iters=5")
    out = run_cli(f"checkpoint={tmp_path}", "split=val", cwd=tmp_path, module="nanolab.evaluate")
    result = json.loads((tmp_path / "evaluation_val.json").read_text())
    assert result["tokens"] == (111_540 - 1) // 32 * 32  # every whole window of the val split
    assert result["step"] == 5 and "val/ce_calibrated" in out.stdout
    for key in ("ce", "ce_calibrated", "temperature", "acc", "acc_top5", "ece", "brier", "loss"):
        assert math.isfinite(result[key])
    assert result["ce_calibrated"] <= result["ce"] + 0.01
    # A checkpoint from before data.shard_gb existed is evaluated the same.
    best = tmp_path / "best.pt"
    state = torch.load(best, weights_only=False)
    del state["config"]["data"]["shard_gb"]
    torch.save(state, best)
    run_cli(f"checkpoint={best}", "split=val", cwd=tmp_path, module="nanolab.evaluate")
    again = json.loads((tmp_path / "evaluation_val.json").read_text())
    # ECE's float32 bin sums moved in the 8th digit between two processes once (CI at 029ceeb):
    # the same numbers, not the same bits.
    numbers = {k for k, v in result.items() if isinstance(v, float)}
    assert {k: again[k] for k in numbers} == pytest.approx(
        {k: result[k] for k in numbers}, rel=1e-6
    )
    assert {k: v for k, v in again.items() if k not in numbers} == {
        k: v for k, v in result.items() if k not in numbers
    }


def test_evaluate_scores_a_run_weighed_by_a_counts_file_with_the_training_splits(tmp_path):
    """A checkpoint's config names files, and evaluate opens none of them: a logit-adjusted run
    trained with loss.class_counts is scored with the training split's counts, and says so."""
    import numpy as np

    counts = tmp_path / "counts.npy"
    np.save(counts, np.arange(65))  # one count per character of tiny Shakespeare
    run = tmp_path / "run"
    run_in_process(run, "loss=logit_adjusted", f"loss.class_counts={counts}", "trainer.max_iters=2")
    counts.unlink()  # gone: the evaluation must not need it
    out = run_cli(f"checkpoint={run}", "token_freq.bins=0", cwd=tmp_path, module="nanolab.evaluate")
    result = json.loads((run / "evaluation_val.json").read_text())
    assert "val/loss here uses the training split's counts instead" in out.stdout + out.stderr
    assert math.isfinite(result["loss"]) and result["loss"] != result["ce"]


def test_z_loss_and_logit_softcap_train(tmp_path):
    run_in_process(
        tmp_path,
        "loss.z_loss=1e-4",
        "model.logit_softcap=15",
        "trainer.max_iters=30",
        "trainer.eval_interval=30",
    )
    evals = [r for r in records(tmp_path) if "val/ce" in r]
    assert evals[1]["val/ce"] < evals[0]["val/ce"] - 0.3
    assert evals[1]["val/loss"] > evals[1]["val/ce"]  # the objective includes the z-loss term


def test_a_model_with_every_option_trains_resumes_exactly_and_loads(tmp_path):
    options = [
        "model.position=rope",
        "model.qk_norm=true",
        "model.mlp=relu2",
        "model.norm=rmsnorm",
        "model.tie_embeddings=false",
        "model.zero_init_proj=true",
        "model.logit_softcap=15",
        "trainer.eval_interval=4",
        "schedule.decay_iters=8",
    ]
    run_in_process(tmp_path / "straight", "trainer.max_iters=8", *options)
    run_in_process(tmp_path / "resumed", "trainer.max_iters=4", *options)
    run_in_process(tmp_path / "resumed", "trainer.max_iters=8", "resume=true", *options)
    straight, resumed = records(tmp_path / "straight"), records(tmp_path / "resumed")
    for a, b in zip(straight, resumed, strict=True):
        assert {k: v for k, v in a.items() if not k.startswith(("time", "perf"))} == {
            k: v for k, v in b.items() if not k.startswith(("time", "perf"))
        }
    assert straight[-1]["val/ce"] < straight[0]["val/ce"]
    from nanolab.weights import model_from_weights, read_weights

    weights = read_weights(str(tmp_path / "resumed" / "last.pt"))
    model = model_from_weights(weights, weights.run.data_meta, "checkpoint")
    assert (
        model.config.position == "rope"
        and "wpe" not in model.transformer
        and not model.config.tie_embeddings
    )
    assert model.generate(torch.zeros(1, 1, dtype=torch.long), 5).shape == (1, 6)


@pytest.mark.parametrize("where", ["none", "environment", "netrc", "settings"])
def test_wandb_credentials_are_found_where_wandb_keeps_them(tmp_path, where):
    """logger.mode=auto asks wandb itself whether it has credentials (a hand-written netrc
    check missed its settings file and its default host)."""
    key = "k" * 40
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("WANDB_")} | {
        "HOME": str(tmp_path),
        "WANDB_CONFIG_DIR": str(tmp_path / "config"),
    }
    if where == "environment":
        env["WANDB_API_KEY"] = key
    elif where == "netrc":
        (tmp_path / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {key}\n")
        (tmp_path / ".netrc").chmod(0o600)
    elif where == "settings":
        (tmp_path / "config").mkdir()
        (tmp_path / "config" / "settings").write_text(f"[default]\napi_key = {key}\n")
    code = "from nanolab.tracking import resolve_wandb_mode; print(resolve_wandb_mode('auto'))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert out.strip() == ("offline" if where == "none" else "online")

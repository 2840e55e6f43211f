"""The optimization instruments inside real runs: a training subset, full-batch gradient descent,
sharpness measured and logged during training, early stopping, and compare's sharpness plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, compose_train, run_cli

from nanolab import ConfigError
from nanolab.compare import compare
from nanolab.config import check_config
from nanolab.data import TokenData
from nanolab.dataloader import BatchSampler, FullBatchSampler
from nanolab.launch import RunInfo
from nanolab.model import GPT, GPTConfig
from nanolab.train import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest)


def run(run_dir: Path, *overrides: str) -> float:
    cfg = compose_train(*TINY, "logger.mode=disabled", *overrides)
    return train(cfg, RunInfo(dir=run_dir, group=None, name=None))


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_full_batch_sampler_covers_every_window_once_per_step():
    tokens = np.arange(129)  # 4 windows of 32
    sampler = FullBatchSampler(tokens, batch_size=2, block_size=32, device=torch.device("cpu"))
    assert sampler.micro_batches == 2
    xs, ys = zip(*(sampler.next_batch() for _ in range(2)))
    assert torch.equal(torch.cat(xs).flatten(), torch.arange(128)) and torch.equal(
        torch.cat(ys).flatten(), torch.arange(1, 129)
    )
    assert torch.equal(sampler.next_batch()[0], xs[0])  # the next step starts over


FULL_BATCH = [
    "data.train_tokens=257",
    "trainer.full_batch=true",
    "optim=sgd",
    "optim.momentum=0",
    "optim.lr=0.1",
    "schedule=constant",
    "schedule.warmup_iters=0",
    "trainer.grad_clip=0",
    "trainer.max_iters=6",
    "trainer.eval_interval=3",
]


def test_full_batch_gradient_descent_does_not_depend_on_the_micro_batches(tmp_path):
    # 8 windows of 32 tokens: one micro-batch of 8 or four of 2 compute the same gradient.
    run(tmp_path / "one", *FULL_BATCH, "trainer.batch_size=8")
    run(tmp_path / "four", *FULL_BATCH, "trainer.batch_size=2")
    one, four = records(tmp_path / "one"), records(tmp_path / "four")
    losses = [[r["train/loss"] for r in rs if "train/loss" in r] for rs in (one, four)]
    assert len(losses[0]) == 6 and losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert losses[0][-1] < losses[0][0]
    assert one[-1]["tokens"] == 6 * 256  # every step is the whole subset


def test_train_tokens_keeps_a_fixed_subset_and_full_batch_needs_divisible_windows(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"trainer.batch_size=3 does not divide; use a batch_size among \[1, 2, 4, 8\]",
    ):
        check_config(compose_train(*TINY, *FULL_BATCH, "trainer.batch_size=3"))
    with pytest.raises(ConfigError, match="data.train_tokens=10 must be null"):
        check_config(compose_train(*TINY, "data.train_tokens=10"))
    with pytest.raises(ConfigError, match="data.train_tokens=99999999 is more than"):
        run(tmp_path / "big", "data.train_tokens=99999999", "trainer.max_iters=1")


def test_label_noise_replaces_a_fixed_share_of_the_training_targets_only():
    vocab = 1009  # tokens 0..1000 in order: a token is its position
    train = np.arange(1001, dtype=np.uint16)

    def noisy(seed: int) -> TokenData:
        data = TokenData(train=train, val=train.copy(), meta={"vocab_size": vocab, "name": "t"})
        data.add_label_noise(0.1, seed)
        return data

    data = noisy(0)
    changed = np.flatnonzero(data.train_targets != train)
    # round(0.1 x 1000 targets); token 0 is no target
    assert len(changed) == 100 and changed.min() >= 1
    assert (
        data.train_targets.max() < vocab
        and np.array_equal(data.train, np.arange(1001))
        and np.array_equal(data.val, train)
    )
    assert np.array_equal(noisy(0).train_targets, data.train_targets)  # the seed alone decides
    assert not np.array_equal(noisy(1).train_targets, data.train_targets)
    # the samplers read inputs from the tokens and targets from the noisy targets
    x, y = BatchSampler(
        data.train,
        batch_size=4,
        block_size=16,
        seed=0,
        device=torch.device("cpu"),
        targets=data.train_targets,
    ).next_batch()
    for row_x, row_y in zip(x.numpy(), y.numpy()):
        start = row_x[0]
        assert np.array_equal(row_x, np.arange(start, start + 16)) and np.array_equal(
            row_y, data.train_targets[start + 1 : start + 17]
        )
    full = FullBatchSampler(data.train, 10, 10, torch.device("cpu"), data.train_targets)
    assert torch.equal(full.x.flatten(), torch.arange(1000))
    assert torch.equal(
        full.y.flatten(), torch.from_numpy(data.train_targets[1:1001].astype(np.int64))
    )
    with pytest.raises(ConfigError, match=r"data.label_noise=1.0 must be a fraction in \[0, 1\)"):
        check_config(compose_train(*TINY, "data.label_noise=1.0"))


def test_a_full_batch_runs_train_eval_is_over_exactly_its_noisy_training_set(tmp_path):
    run(
        tmp_path / "a",
        *FULL_BATCH,
        "trainer.batch_size=4",
        "data.label_noise=0.5",
        "trainer.max_iters=1",
        "trainer.eval_interval=1",
    )
    cfg = compose_train(*TINY, *FULL_BATCH, "trainer.batch_size=4", "data.label_noise=0.5")
    data = TokenData.load(cfg.data)
    data.limit_train(257)
    data.add_label_noise(0.5, 0)
    state = torch.load(tmp_path / "a" / "last.pt", weights_only=False)
    model = GPT(
        GPTConfig(**{k: v for k, v in cfg.model.items() if k != "name"}, vocab_size=data.vocab_size)
    )
    model.load_state_dict(state["model"])
    model.eval()
    x = torch.from_numpy(data.train[:256].astype(np.int64)).view(8, 32)
    y = torch.from_numpy(data.train_targets[1:257].astype(np.int64)).view(8, 32)
    with torch.no_grad():
        by_hand = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
    final = records(tmp_path / "a")[-1]
    assert final["step"] == 1 and final["train_eval/ce"] == pytest.approx(by_hand, rel=1e-5)


def test_sharpness_is_logged_during_training_with_the_gd_threshold(tmp_path):
    run(
        tmp_path / "a",
        *FULL_BATCH,
        "trainer.batch_size=8",
        "sharpness.every=2",
        "sharpness.k=2",
        "sharpness.lanczos_iters=8",
    )
    measured = [r for r in records(tmp_path / "a") if "sharpness/top1" in r]
    assert [r["step"] for r in measured] == [0, 2, 4, 6]
    for r in measured:
        assert r["sharpness/top1"] >= r["sharpness/top2"] > 0
        assert r["sharpness/threshold"] == pytest.approx(2 / 0.1)
        assert "sharpness/precond_top1" not in r
    # The probe (here the whole subset) and the Lanczos start are seeded: a rerun measures the same.
    run(
        tmp_path / "b",
        *FULL_BATCH,
        "trainer.batch_size=8",
        "sharpness.every=2",
        "sharpness.k=2",
        "sharpness.lanczos_iters=8",
    )
    assert [r for r in records(tmp_path / "b") if "sharpness/top1" in r][0][
        "sharpness/top1"
    ] == measured[0]["sharpness/top1"]
    # in-process runs: compare reads the records
    assert (tmp_path / "a" / ".hydra").exists() is False
    compare([str(tmp_path / "a")], out=tmp_path / "report")
    assert (tmp_path / "report" / "sharpness.png").stat().st_size > 0


def test_adam_logs_its_preconditioned_sharpness_against_38_over_lr(tmp_path):
    run(
        tmp_path,
        "trainer.max_iters=4",
        "trainer.eval_interval=4",
        "schedule=constant",
        "schedule.warmup_iters=0",
        "optim.lr=0.01",
        "sharpness.every=2",
        "sharpness.probe_tokens=128",
        "sharpness.lanczos_iters=6",
    )
    measured = [r for r in records(tmp_path) if "sharpness/top1" in r]
    assert "sharpness/precond_top1" not in measured[0]  # step 0: Adam has no second moments yet
    assert measured[1]["sharpness/precond_top1"] > measured[1]["sharpness/top1"]
    assert measured[1]["sharpness/threshold"] == pytest.approx((2 + 2 * 0.9) / (0.1 * 0.01))


def test_early_stopping_ends_the_run_keeps_best_and_is_final(tmp_path):
    # No evaluation can improve val/ce by 10: the run stops at the second one after the baseline.
    run(
        tmp_path,
        "trainer.max_iters=40",
        "trainer.eval_interval=5",
        "trainer.early_stop.patience=2",
        "trainer.early_stop.min_delta=10",
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "early_stopped"
    assert [r["step"] for r in records(tmp_path) if "val/ce" in r] == [0, 5, 10]
    assert (tmp_path / "best.pt").exists() and torch.load(tmp_path / "last.pt", weights_only=True)[
        "step"
    ] == 10
    run(
        tmp_path,
        "trainer.max_iters=40",
        "trainer.eval_interval=5",
        "trainer.early_stop.patience=2",
        "trainer.early_stop.min_delta=10",
        "resume=true",
    )
    # already finished: nothing more
    assert [r["step"] for r in records(tmp_path) if "val/ce" in r] == [0, 5, 10]
    report = compare([str(tmp_path)], out=tmp_path / "report").read_text()
    assert "Stopped early" in report and "early_stopped" in report and "1 finished" in report


def test_a_run_stopped_early_is_finished_for_the_launcher_and_the_trainer_alike():
    """One rule (Resume.finished) decides, before Hydra writes a record, that a relaunched run
    has nothing left to do: max_iters reached or stopped early, and no evaluation due."""
    from nanolab.resume import Resume

    def state(step: int, stopped: bool, due: bool) -> dict:
        return {"step": step, "early_stop": {"stopped": stopped}, "eval_due": due}

    assert Resume(Path("last.pt"), state(10, True, False), []).finished(40)
    assert Resume(Path("last.pt"), state(40, False, False), []).finished(40)
    assert not Resume(Path("last.pt"), state(10, False, False), []).finished(40)
    assert not Resume(Path("last.pt"), state(10, True, True), []).finished(40)


def test_a_run_ends_at_its_target_and_compare_counts_its_steps(tmp_path):
    """trainer.early_stop.target: the first evaluation at or below it ends the run."""
    run(tmp_path / "free", "trainer.max_iters=20", "trainer.eval_interval=5")
    evals = {r["step"]: r["val/ce"] for r in records(tmp_path / "free") if "val/ce" in r}
    target = (evals[5] + evals[10]) / 2  # first reached at step 10
    run(
        tmp_path / "target",
        "trainer.max_iters=20",
        "trainer.eval_interval=5",
        f"trainer.early_stop.target={target}",
    )
    summary = json.loads((tmp_path / "target" / "summary.json").read_text())
    assert summary["status"] == "early_stopped"
    assert [r["step"] for r in records(tmp_path / "target") if "val/ce" in r] == [0, 5, 10]
    compare([str(tmp_path / "target")], out=tmp_path / "report", target=f"val/ce={target}")
    # halfway between steps 5 and 10 on val/ce: step 7.5
    row = (tmp_path / "report" / "report.csv").read_text().splitlines()
    values = dict(zip(row[0].split(","), row[1].split(",")))
    assert float(values["target/steps_mean"]) == pytest.approx(7.5)


@pytest.mark.parametrize(
    "experiment,choice",
    [
        ("edge_of_stability", []),
        ("optimizer_comparison", []),
        ("speedrun_char", []),
        ("nanogpt_quickstart", []),
        ("loss_lr_sweep", ["loss=squentropy"]),
        ("mse_rescaling", ["loss.k=15", "loss.M=30"]),
        ("loss_comparison_tuned", ["loss=mse_rescaled"]),
        (
            "loss_comparison_bpe",
            ["loss=mse_rescaled_bpe", "model.n_embd=32", "model.n_head=2", "model.n_layer=1"],
        ),
        ("model_size", ["model.n_embd=64", "model.n_layer=2"]),
        ("double_descent", ["model.n_embd=8", "data.label_noise=0.2"]),
        (
            "finetune_shakespeare",
            ["pretrained=null", "model.n_embd=32", "model.n_head=2", "model.n_layer=1"],
        ),
        ("mup_transfer", ["model.n_embd=128"]),
        ("mup_depth", ["model.n_layer=4", "model.depth_alpha=1"]),
        ("isoflop", ["model.n_embd=32", "trainer.flops_budget=1e9"]),
    ],
)
def test_the_presets_run_a_few_steps(tmp_path, experiment, choice):
    cfg = compose_train(
        f"experiment={experiment}",
        *choice,
        "logger.mode=disabled",
        "trainer.max_iters=4",
        "trainer.eval_interval=2",
        "trainer.eval_iters=1",
        "sharpness.lanczos_iters=3",
    )
    train(cfg, RunInfo(dir=tmp_path, group=None, name=None))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (
        summary["status"] == "finished"
        and summary["params"] > 0
        and summary["flops_per_token"] > 6 * summary["matrix_params"] > 0
    )
    assert any("sharpness/top1" in r for r in records(tmp_path)) == (
        experiment == "edge_of_stability"
    )
    if experiment == "model_size":
        assert cfg.model.n_head == 2  # head size 32 kept
    if experiment.startswith("mup"):
        assert cfg.model.n_head == cfg.model.n_embd // 16 and cfg.model.parametrization == "mup"
    if experiment == "isoflop":  # 1e9 FLOPs buy 4 steps of 209,088 FLOPs/token x 1024 tokens
        assert summary["flops_per_token"] == 209_088 and records(tmp_path)[-1]["step"] == 4
        assert (summary["flops_budget"], summary["head_size"], summary["n_embd"]) == (1e9, 16, 32)


@pytest.mark.parametrize("experiment", ["loss_comparison_tuned", "loss_comparison_bpe"])
def test_each_loss_of_a_tuned_comparison_runs_at_its_own_lr(experiment):
    cfg = compose_train(f"experiment={experiment}", return_hydra_config=True)
    losses = cfg.hydra.sweeper.params.loss.split(",")
    assert cfg.hydra.sweeper.params.seed == "1337,1338,1339" and len(losses) == 4
    for loss in losses:
        run = compose_train(f"experiment={experiment}", f"loss={loss}")
        assert run.optim.lr == run.tuned_lr[run.loss.name]


def test_the_finetune_preset_needs_its_pretrained_weights_named(tmp_path):
    with pytest.raises(ConfigError, match=r"pretrained: no value given .* e.g. pretrained=\.\.\."):
        check_config(compose_train("experiment=finetune_shakespeare"))
    # from the command line (where the config also holds Hydra's node, with its own ???): one line,
    # exit 2
    proc = run_cli(
        "experiment=finetune_shakespeare",
        "hydra.mode=RUN",
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
        check=False,
    )
    assert (
        proc.returncode == 2
        and "pretrained: no value given" in proc.stderr + proc.stdout
        and "hydra.job" not in proc.stderr + proc.stdout
    )
    assert not (tmp_path / "run").exists()
    cfg = compose_train("experiment=finetune_shakespeare", "pretrained=runs/pretrained")
    check_config(cfg)
    assert cfg.init_from == "runs/pretrained" and cfg.optim.lr == 0.003

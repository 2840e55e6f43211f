"""Every optimizer of configs/optim/ stopped mid-run resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY, compose_train
from test_optim import OPTIMIZERS

from nanolab.launch import RunInfo
from nanolab.train import train


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_resumes_exactly(tmp_path, name):
    def run(directory: Path, *overrides: str) -> None:
        cfg = compose_train(
            *TINY,
            "logger.mode=disabled",
            f"optim={name}",
            "trainer.eval_interval=4",
            "schedule.warmup_iters=2",
            "schedule.decay_iters=8",
            *overrides,
        )
        train(cfg, RunInfo(dir=directory, group=None, name=None))

    run(tmp_path / "straight", "trainer.max_iters=8")
    run(tmp_path / "resumed", "trainer.max_iters=4")
    run(tmp_path / "resumed", "trainer.max_iters=8", "resume=true")
    straight, resumed = records(tmp_path / "straight"), records(tmp_path / "resumed")
    assert [r["step"] for r in straight] == [r["step"] for r in resumed]
    for a, b in zip(straight, resumed):
        for key in ("train/loss", "train/grad_norm", "val/ce", "train_eval/ce"):
            assert a.get(key) == b.get(key), (name, a["step"], key)  # bit for bit

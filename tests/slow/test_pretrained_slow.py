"""init_from a finished run: the new run starts at its weights with a fresh optimizer."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, run_cli


def test_init_from_a_run_starts_at_its_weights_with_a_fresh_optimizer(tmp_path):
    common = [*TINY, "logger.mode=disabled", "trainer.eval_interval=5"]
    run_cli(*common, "trainer.max_iters=10", f"hydra.run.dir={tmp_path}/source", cwd=tmp_path)
    source = json.loads((tmp_path / "source" / "summary.json").read_text())
    run_cli(
        *common,
        "trainer.max_iters=5",
        f"init_from={tmp_path}/source",
        f"hydra.run.dir={tmp_path}/tuned",
        cwd=tmp_path,
    )
    first = json.loads((tmp_path / "tuned" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0 and first["val/ce"] == pytest.approx(source["best/val/ce"], abs=1e-6)
    # its own count from 0
    assert torch.load(tmp_path / "tuned" / "last.pt", weights_only=False)["step"] == 5

    mismatch = run_cli(
        *common,
        "trainer.max_iters=5",
        "model.n_layer=3",
        f"init_from={tmp_path}/source",
        f"hydra.run.dir={tmp_path}/bad",
        cwd=tmp_path,
        check=False,
    )
    output = mismatch.stdout + mismatch.stderr
    errors = [line for line in output.splitlines() if "init_from:" in line]
    assert mismatch.returncode == 2 and "Traceback" not in output and len(errors) == 1
    assert "n_layer: nanolab checkpoint" in errors[0] and "has 2, model.n_layer=3" in errors[0]

"""nanolab.prune on a trained run: the report's sparsity, and fine-tuning under the mask."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import TINY, run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_prune_a_run_reports_sparsity_and_fine_tunes_under_the_mask(tmp_path):
    run_cli(
        *TINY,
        "trainer.max_iters=30",
        "trainer.eval_interval=30",
        "logger.mode=disabled",
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
    )
    out = run_cli(
        f"checkpoint={tmp_path}/run",
        "amounts=[0,0.5,0.9]",
        "finetune_steps=5",
        "finetune_lr=1e-3",
        cwd=tmp_path,
        module="nanolab.prune",
    )
    report = json.loads((tmp_path / "run" / "prune" / "prune.json").read_text())["results"]
    assert [round(r["sparsity"], 3) for r in report] == [0.0, 0.5, 0.9]
    assert report[0]["nonzero_params"] > report[1]["nonzero_params"] > report[2]["nonzero_params"]
    # global: per layer it varies around the target
    assert all(abs(s - 0.9) < 0.2 for s in report[2]["per_layer"].values())
    run_cli(f"checkpoint={tmp_path}/run", cwd=tmp_path, module="nanolab.evaluate")
    evaluation = json.loads((tmp_path / "run" / "evaluation_val.json").read_text())
    # amount 0 is the model as trained, scored on the whole val split as nanolab.evaluate does
    assert report[0]["pruned/val/ce"] == pytest.approx(evaluation["ce"], abs=1e-6)
    assert report[2]["pruned/val/ce"] > report[0]["pruned/val/ce"]
    # the mask held while training
    assert [r["finetuned/sparsity"] for r in report] == [r["sparsity"] for r in report]
    # fine-tuning recovers some of the loss
    assert report[2]["finetuned/val/ce"] < report[2]["pruned/val/ce"]
    with open(tmp_path / "run" / "prune" / "prune.csv") as f:
        assert [row["amount"] for row in csv.DictReader(f)] == ["0", "0.5", "0.9"]
    assert (tmp_path / "run" / "prune" / "prune.png").read_bytes().startswith(PNG_MAGIC)
    assert "| 0.9 | float32 | 0.9000 |" in out.stdout

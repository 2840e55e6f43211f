"""scripts/optimizer_study.py's arithmetic: the weight decay for a share decayed per step, the
seconds to a target loss, and ranks that call overlapping seeds a tie."""

import importlib.util
import json
import math

import pytest
from conftest import REPO

spec = importlib.util.spec_from_file_location(
    "optimizer_study", REPO / "scripts" / "optimizer_study.py"
)
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


def test_weight_decay_is_the_share_decayed_per_step_at_the_peak_lr():
    adamw = study.settings_for("adamw", 4e-3, 4e-4)
    assert adamw["optim.weight_decay"] == pytest.approx(0.1)
    # SGD's decay is coupled and momentum 0.9 repeats it about 10 times
    assert study.settings_for("sgd", 0.3, 4e-4)["optim.weight_decay"] == pytest.approx(4e-4 / 3)
    muon = study.settings_for("muon", 0.02, 4e-4, adamw_lr=4e-3)
    assert muon["optim.weight_decay"] == pytest.approx(0.02)
    assert muon["optim.adamw_weight_decay"] == pytest.approx(0.1)
    assert muon["optim.adamw_lr"] == 4e-3


def test_seconds_to_target_interpolate_between_evaluations(tmp_path):
    rows = [
        {"step": s, "tokens": 768 * s, "time_s": s / 10, "val/ce": v}
        for s, v in ((0, 4.0), (250, 2.5), (500, 1.5))
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    # 2.0 lies halfway from step 250 to 500: step 375, at 20 ms a step
    assert study.seconds_to_target(tmp_path, 20.0) == pytest.approx(7.5)
    rows[-1]["val/ce"] = 2.2
    (tmp_path / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    assert math.isnan(study.seconds_to_target(tmp_path, 20.0))


def test_ranks_separate_only_seeds_that_do_not_overlap():
    values = {"c": [1.5, 1.6, 1.7], "a": [1.0, 1.1, 1.2], "b": [1.15, 1.3, 1.4]}
    assert study.ranks(values) == "a = b < c"

"""nanolab.compare on real sweeps: a 2 losses x 2 seeds multirun's report, and its W&B
workspace definition."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from conftest import TINY, run_cli
from test_compare import PNG_MAGIC, read_csv
from wandb_offline import offline_runs


def test_compare_a_real_two_losses_by_two_seeds_multirun(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli(
        "-m",
        "loss=ce,mse",
        "seed=1,2",
        *TINY,
        "trainer.max_iters=6",
        "trainer.eval_interval=3",
        "logger.mode=disabled",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    out = run_cli(str(sweep), cwd=tmp_path, module="nanolab.compare")

    finals: dict[str, list[float]] = {"ce": [], "mse": []}
    for job in sweep.iterdir():
        if job.is_dir():
            summary = json.loads((job / "summary.json").read_text())
            finals[
                yaml.safe_load((job / ".hydra" / "config.yaml").read_text())["loss"]["name"]
            ].append(summary["final/val/ce_calibrated"])
    rows = read_csv(sweep / "report.csv")
    for loss, (a, b) in finals.items():
        mean = (a + b) / 2
        std = math.sqrt(((a - mean) ** 2 + (b - mean) ** 2) / (2 - 1))
        assert float(rows[loss]["val/ce_calibrated_mean"]) == pytest.approx(mean, rel=1e-12)
        assert float(rows[loss]["val/ce_calibrated_std"]) == pytest.approx(std, rel=1e-9)
        assert rows[loss]["n"] == "2" and rows[loss]["seeds"] == "1 2"
    assert "| loss | n | seeds |" in out.stdout
    assert (sweep / "curves.png").read_bytes().startswith(PNG_MAGIC)


def test_wandb_workspace_definition_of_a_real_two_by_two_sweep(tmp_path, monkeypatch):
    sweep = tmp_path / "sweep"
    run_cli(
        "-m",
        *TINY,
        "loss=ce,mse",
        "optim.lr=1e-3,1e-2",
        "trainer.max_iters=4",
        "trainer.eval_interval=2",
        "logger.mode=offline",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = run_cli(str(sweep), "--wandb-workspace", cwd=tmp_path, module="nanolab.compare")
    assert (
        out.stdout.strip()
        .splitlines()[-1]
        .startswith(
            f"W&B is offline: the workspace's definition is in {sweep / 'wandb_workspace.json'}"
        )
    )

    view = json.loads((sweep / "wandb_workspace.json").read_text())
    runset = view["spec"]["section"]["runSets"][0]
    runs = offline_runs(sweep)
    assert len(runs) == 4 and {r["group"] for r in runs} == {"sweep"}
    assert runset["filters"]["filters"] == [
        {"key": {"section": "run", "name": "group"}, "op": "=", "value": "sweep", "disabled": False}
    ]
    # Grouped by what the sweep varies, so the seeds of a configuration are averaged; those
    # keys exist in every run's W&B config.
    assert sorted(g["name"] for g in runset["grouping"]) == ["loss.value.name", "optim.value.lr"]
    assert all({"loss", "optim"} <= set(r["config"]) and "lr" in r["config"]["optim"] for r in runs)
    panels = view["spec"]["section"]["panelBankConfig"]["sections"][0]["panels"]
    assert [p["config"]["metrics"] for p in panels] == [
        ["val/ce_calibrated"],
        ["val/ce"],
        ["val/acc"],
        ["train/loss"],
    ]
    assert {
        (p["config"]["xAxis"], p["config"]["groupAgg"], p["config"]["groupArea"]) for p in panels
    } == {("tokens", "mean", "stddev")}
    assert "summary:val/ce_calibrated.last" in runset["runFeed"]["columnOrder"]

"""Sweeps on Hydra's launcher and sweeper plugins (the `launchers` and `optuna` extras):
joblib in parallel, submitit locally, Optuna minimising the objective."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import TINY, run_cli
from wandb_offline import offline_runs

SHORT = [*TINY, "trainer.max_iters=4", "trainer.eval_interval=2", "logger.mode=offline"]


def summaries(sweep: Path) -> dict[str, dict]:
    return {
        d.name: json.loads((d / "summary.json").read_text())
        for d in sweep.iterdir()
        if (d / ".hydra").is_dir()
    }


def test_joblib_runs_jobs_in_parallel_as_distinct_wandb_runs(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    # 3 jobs on 2 workers: one worker process runs two jobs, whose W&B runs must stay apart.
    run_cli(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "loss=ce,mse,label_smoothing",
        *SHORT,
        f"hydra.sweep.dir={tmp_path}/sweep",
        cwd=tmp_path,
    )
    runs = offline_runs(tmp_path / "sweep")
    assert len(runs) == 3 and len({r["id"] for r in runs}) == 3
    assert sorted(r["config"]["loss"]["name"] for r in runs) == ["ce", "label_smoothing", "mse"]
    for run in runs:
        assert [h["step"] for h in run["history"] if "val/ce" in h] == [0, 2, 4]
    assert all(s["status"] == "finished" for s in summaries(tmp_path / "sweep").values())


def test_submitit_local_runs_a_job(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    run_cli(
        "-m",
        "hydra/launcher=submitit_local",
        "loss=mse",
        *SHORT,
        f"hydra.sweep.dir={tmp_path}/sweep",
        cwd=tmp_path,
    )
    (job,) = summaries(tmp_path / "sweep").values()
    assert job["status"] == "finished" and job["best/val/ce"] > 0
    assert (tmp_path / "sweep" / ".submitit").is_dir()  # it did go through submitit


def test_optuna_search_minimises_the_objective(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    # a fixed value would win over the search
    searched = [o for o in SHORT if not o.startswith("optim.lr=")]
    run_cli("hparams_search=optuna", "hydra.sweeper.n_trials=3", *searched, cwd=tmp_path)
    (sweep,) = tmp_path.glob("multirun/*")  # the default sweep dir: one for all trials
    jobs = summaries(sweep)
    assert len(jobs) == 3
    objective = {name: s["best/val/ce_calibrated"] for name, s in jobs.items()}
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(min(objective.values()))
    lrs = set()
    for name in jobs:
        overrides = yaml.safe_load((sweep / name / ".hydra" / "overrides.yaml").read_text())
        lrs.add(next(o for o in overrides if o.startswith("optim.lr=")))
    assert len(lrs) == 3  # three trials, three learning rates drawn from the search space

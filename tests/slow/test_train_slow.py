"""Training end to end on the command line: a multirun gives one W&B run per loss, the
loss-comparison experiment sweeps four losses over three seeds, and a W&B run holds the
resolved config, best summaries, Hydra files and checkpoint."""

import json

from conftest import TINY, compose_train, run_cli
from wandb_offline import offline_runs


def test_multirun_gives_one_wandb_run_per_loss(tmp_path):
    run_cli(
        "-m",
        "loss=ce,mse,label_smoothing",
        *TINY,
        "trainer.max_iters=4",
        "trainer.eval_interval=2",
        "logger.mode=offline",
        f"hydra.sweep.dir={tmp_path}/sweep",
        cwd=tmp_path,
    )
    runs = offline_runs(tmp_path / "sweep")
    assert len(runs) == 3 and len({r["id"] for r in runs}) == 3
    assert {r["config"]["loss"]["name"] for r in runs} == {"ce", "mse", "label_smoothing"}
    assert len({r["group"] for r in runs}) == 1 and runs[0]["group"] == "sweep"
    for run in runs:
        loss = run["config"]["loss"]["name"]
        assert run["name"] == f"loss={loss},seed=1337" and loss in run["tags"]
        assert [h["step"] for h in run["history"] if "val/ce" in h] == [0, 2, 4]
        assert run["summary"]["status"] == "finished"
    # <num>_<override_dirname>
    job_dirs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert [d.split(",")[0] for d in job_dirs] == [
        "0_loss=ce",
        "1_loss=mse",
        "2_loss=label_smoothing",
    ]


def test_loss_comparison_experiment_sweeps_four_losses_over_three_seeds(tmp_path):
    params = compose_train(
        "experiment=loss_comparison", return_hydra_config=True
    ).hydra.sweeper.params
    assert (params.loss, params.seed) == ("ce,mse,label_smoothing,squentropy", "1337,1338,1339")
    # two of its twelve jobs, run as the preset runs them: one W&B group, runs named by their
    # overrides
    run_cli(
        "experiment=loss_comparison",
        "loss=ce,mse",
        "seed=1338",
        *TINY,
        "trainer.max_iters=2",
        "trainer.eval_interval=2",
        "logger.mode=offline",
        f"hydra.sweep.dir={tmp_path}/sweep",
        cwd=tmp_path,
    )
    runs = offline_runs(tmp_path / "sweep")
    assert sorted(r["name"] for r in runs) == ["loss=ce,seed=1338", "loss=mse,seed=1338"]
    assert {r["group"] for r in runs} == {"loss_comparison-sweep"}
    assert {(r["config"]["loss"]["name"], r["config"]["seed"]) for r in runs} == {
        ("ce", 1338),
        ("mse", 1338),
    }


def test_wandb_run_has_the_resolved_config_best_summaries_hydra_files_and_checkpoint(tmp_path):
    run_cli(
        *TINY,
        "trainer.max_iters=4",
        "trainer.eval_interval=2",
        "logger.mode=offline",
        "logger.log_checkpoints=true",
        f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
    )
    (run,) = offline_runs(tmp_path / "wandb")
    config = run["config"]
    assert (config["device"], config["dtype"], config["compile"], config["world_size"]) == (
        "cpu",
        "float32",
        False,
        1,
    )
    assert config["params"] > 0 and config["tokens_per_step"] == 8 * 32 and "logger" not in config
    assert set(config["git"]) == {"commit", "dirty"}
    summary, local = run["summary"], json.loads((tmp_path / "summary.json").read_text())
    evals = [
        r
        for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
        if "val/ce" in r
    ]
    assert summary["val/ce"] == {
        "min": min(r["val/ce"] for r in evals),
        "last": evals[-1]["val/ce"],
    }
    assert summary["val/acc"] == {
        "max": max(r["val/acc"] for r in evals),
        "last": evals[-1]["val/acc"],
    }
    assert (
        not [k for k in summary if k.startswith("final/")]
        and local["final/val/ce"] == evals[-1]["val/ce"]
    )
    assert {".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml"} <= set(run["files"])
    (artifact,) = run["artifacts"]
    assert artifact["type"] == "model" and artifact["files"] == ["best.pt"]
    assert set(artifact["aliases"]) == {"best", f"step-{local['best/step']}", "latest"}

"""Sweeps on Hydra's launcher and sweeper plugins (the `launchers` and `optuna` extras): jobs in
parallel with joblib, through submitit, and an Optuna search minimising the run's objective."""

import re
from pathlib import Path

import pytest
from conftest import compose_train
from omegaconf import OmegaConf

CONFIGS = Path(__file__).parents[1] / "configs"


def test_slurm_preset_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_train(
        "hydra/launcher=slurm", "hydra.launcher.partition=gpu", return_hydra_config=True
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 1, 1)
    # requeued at the time limit (test_reliability: the signal path)
    assert launcher.max_num_timeout == 3


def test_parallel_jobs_spread_over_gpus(monkeypatch):
    from nanolab import runtime

    monkeypatch.setattr(runtime.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(runtime.torch.cuda, "device_count", lambda: 4)
    assert [str(runtime.pick_device("auto", n)) for n in (0, 1, 5)] == [
        "cuda:0",
        "cuda:1",
        "cuda:1",
    ]
    assert str(runtime.pick_device("auto")) == "cuda"  # a single run


@pytest.mark.parametrize(
    "optim",
    sorted(p.stem for p in (Path(__file__).parents[1] / "configs" / "optim").glob("*.yaml")),
)
def test_optuna_searches_each_optimizers_own_lr_range(optim):
    cfg = compose_train("hparams_search=optuna", f"optim={optim}", return_hydra_config=True)
    searched = cfg.hydra.sweeper.params["optim.lr"]
    low, high = map(float, re.fullmatch(r"tag\(log, interval\((.+), (.+)\)\)", searched).groups())
    # its default and its tuned optimum (docs/optimizer_comparison.md) 3x or more from an edge
    tuned = OmegaConf.load(CONFIGS / "experiment" / "optimizer_comparison.yaml").tuned_lr
    for lr in (cfg.optim.lr, tuned.get(optim, cfg.optim.lr)):
        assert low * 3 <= lr <= high / 3

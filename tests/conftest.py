"""Shared fixtures: a data root holding the tiny Shakespeare text, tiny configs, CLI runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from nanolab.model import GPT, GPTConfig

# The tests are CPU-only on any machine: a GPU would make their numbers machine-dependent and
# turn tiny runs into real GPU work (scripts/gpu_check.sh measures the GPU paths).
os.environ["CUDA_VISIBLE_DEVICES"] = ""

REPO = Path(__file__).resolve().parents[1]
# The slow tier is a folder: every test in tests/slow/ (subprocess end to end, long runs) is
# marked slow, so `python -m pytest` (addopts: -m 'not slow') leaves it to `-m slow`.
SLOW_TIER = Path(__file__).resolve().parent / "slow"


@pytest.hookimpl(tryfirst=True)  # before pytest's own hook deselects by mark
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_TIER in item.path.parents:
            item.add_marker(pytest.mark.slow)


SHAKESPEARE_COPIES = [
    REPO / "data" / "shakespeare_char" / "input.txt",
    REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt",
]

# A model small enough that a step takes milliseconds on a laptop CPU.
TINY = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=32",
    "trainer.batch_size=8",
    "trainer.eval_iters=2",
    "trainer.log_interval=1",
    "schedule.warmup_iters=5",
    "optim.lr=1e-2",
]


@pytest.fixture(scope="session", autouse=True)
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with the tiny Shakespeare text in place; every run in the tests prepares
    its datasets there (NANOLAB_DATA_DIR), never in the repository."""
    source = next((p for p in SHAKESPEARE_COPIES if p.is_file()), None)
    if source is None:
        pytest.fail(
            f"the tiny Shakespeare text is needed at one of {[str(p) for p in SHAKESPEARE_COPIES]}"
        )
    root = tmp_path_factory.mktemp("data")
    (root / "shakespeare_char").mkdir()
    shutil.copy(source, root / "shakespeare_char" / "input.txt")
    os.environ["NANOLAB_DATA_DIR"] = str(root)
    os.environ["WANDB_SILENT"] = "true"
    return root


def compose_train(*overrides: str, return_hydra_config: bool = False) -> DictConfig:
    """The training config as `python -m nanolab.train <overrides>` would compose it."""
    with initialize_config_module("nanolab.configs", version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=return_hydra_config)


def run_cli(
    *args: str,
    cwd: Path,
    module: str = "nanolab.train",
    check: bool = True,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run `python -m <module> <args>` in cwd, as a user would (in `env`, default this
    process's)."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            "exit "
            f"{proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
        )
    return proc


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for tiny models: as fast, and not slowed by a busy neighbour process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def nanogpt_char_checkpoint(path, block: int = 32) -> GPT:
    """A nanoGPT train.py checkpoint (compiled model's keys) of a random character model."""
    torch.manual_seed(0)
    source = GPT(
        GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block, vocab_size=65, bias=False)
    ).eval()
    torch.save(
        {
            "model": {f"_orig_mod.{k}": v for k, v in source.state_dict().items()},
            "model_args": {
                "n_layer": 2,
                "n_head": 2,
                "n_embd": 32,
                "block_size": block,
                "bias": False,
                "vocab_size": 65,
                "dropout": 0.0,
            },
            "optimizer": {},
            "iter_num": 250,
            "best_val_loss": torch.tensor(2.5),
            "config": {"dataset": "shakespeare_char"},
        },
        path,
    )
    return source

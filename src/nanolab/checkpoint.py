"""Checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint holds the model and optimizer, the GradScaler, the step, the best val/ce, the
resolved config, the dataset's meta (so sampling needs no data directory), the RNG states of
python, numpy and torch (CPU and CUDA), the training sampler's generator and the W&B run id.
It contains only tensors and plain Python values, so it loads with `weights_only=True`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nanolab import ConfigError
from nanolab.atomic import atomic_path

FORMAT = 1


def capture_rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].copy()), "pos": np_state[2], "gauss": [np_state[3], np_state[4]]},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy(), np_state["pos"], *np_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` (plus the format version) to `path` atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)
    for stale in path.parent.glob(f".{path.name}.tmp*"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint; a missing, truncated or foreign file raises ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        raise ConfigError(f"checkpoint {path} is unreadable (truncated or not a nanolab checkpoint): {e}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a nanolab checkpoint of format {FORMAT}")
    return state


def check_compatible(path: Path, state: dict, model_config: dict) -> None:
    """Raise if the checkpoint's model differs in shape or vocabulary from the configured one."""
    saved = state["model_config"]
    diffs = [f"{k}: checkpoint {saved.get(k)} vs now {v}" for k, v in model_config.items() if k != "dropout" and saved.get(k) != v]
    if diffs:
        raise ConfigError(f"checkpoint {path} does not fit the configured model/data: " + "; ".join(diffs))

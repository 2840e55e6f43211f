"""Checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint holds the model and optimizer, the GradScaler, the run state (step, best val/ce,
skipped steps, W&B run id), the resolved config, the dataset's meta (so sampling needs no data
directory), the RNG states of python, numpy and torch (CPU and CUDA) of every rank, the
training sampler's generators and the run's summary. It contains only tensors and plain
Python values, so it loads with `weights_only=True`.

Checkpoints written by older versions are brought up to date in one place, `upgrade`, when
they are loaded: nothing else in nanolab needs to know how old a checkpoint is.
"""

from __future__ import annotations

import logging
import math
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from nanolab import ConfigError, StorageError, config_as_data
from nanolab.atomic import atomic_path
from nanolab.dataloader import stream_seed
from nanolab.optim import state_classes

log = logging.getLogger(__name__)
FORMAT = 1

# Model options added after checkpoints were first written, at the values those models had.
MODEL_OPTIONS_ADDED = {
    "position": "learned",
    "rope_base": 10000.0,
    "qk_norm": False,
    "mlp": "gelu",
    "norm": "layernorm",
    "tie_embeddings": True,
    "zero_init_proj": False,
    "gelu": "exact",
    "head_dim": None,
    "mlp_hidden": None,
    "init_std": 0.02,
    "parametrization": "sp",
    "mup_base_width": None,
    "mup_base_head_dim": None,
    "input_mult": 1.0,
    "output_mult": 1.0,
    "depth_alpha": 0.0,
    "mup_base_depth": None,
}

# Keys added to the saved config after checkpoints were first written, with the value those
# runs had in effect. head_chunk_tokens only chooses how the loss is computed (same values in
# less memory), so `auto` keeps evaluating an old large-vocabulary checkpoint affordable.
CONFIG_KEYS_ADDED = {
    "loss.z_loss": 0.0,
    "data.shard_gb": 4,
    "data.shared_filesystem": True,
    "head_chunk_tokens": "auto",
    "trainer.on_nonfinite": "stop",
    "trainer.fix_global_batch": True,
    "trainer.full_batch": False,
    "trainer.early_stop.patience": 0,
    "trainer.early_stop.min_delta": 0.0,
    "trainer.early_stop.target": None,
    "data.train_tokens": None,
    "data.label_noise": 0.0,
    "data.label_noise_seed": 0,
    "init_from": None,
    "sharpness.every": 0,
    "sharpness.k": 1,
    "sharpness.probe_tokens": 4096,
    "sharpness.lanczos_iters": 20,
    "noise_scale.enabled": False,
    "noise_scale.ema": 0.99,
    "token_freq.bins": 0,
    "token_freq.scheme": "equal_mass",
    "sparsity.final": 0.0,
    "sparsity.start": 0,
    "sparsity.end": None,
    "sparsity.every": 100,
    "sparsity.scope": "global",
    "sparsity.embeddings": False,
    "sparsity.l1": 0.0,
    "sparsity.group_lasso": 0.0,
    "trainer.flops_budget": None,
    **{f"model.{k}": v for k, v in MODEL_OPTIONS_ADDED.items()},
}


def upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint of any earlier version in today's layout (in place, and returned)."""
    config = state["config"]
    for dotted, value in CONFIG_KEYS_ADDED.items():
        *parents, key = dotted.split(".")
        node = config
        for parent in parents:
            node = node.setdefault(parent, {})
        node.setdefault(key, value)
    # Where the run prepared its data, read (never written) by evaluate and prune: recorded
    # since this key exists; before, only a data.dir saved as an absolute path says it.
    saved_dir = config.get("data", {}).get("dir")
    state.setdefault(
        "data_dir",
        saved_dir if isinstance(saved_dir, str) and Path(saved_dir).is_absolute() else None,
    )
    state.setdefault("data_meta", {}).setdefault("name", config.get("data", {}).get("name"))
    if config.get("optim", {}).get("name") == "adamw":
        config["optim"].setdefault("fused", "auto")
    state["model_config"].setdefault("logit_softcap", None)
    for key, value in MODEL_OPTIONS_ADDED.items():
        state["model_config"].setdefault(key, value)
    state.setdefault("skipped_steps", 0)
    state.setdefault("eval_due", False)
    state.setdefault("noise_scale", None)
    state.setdefault("sparsity", None)
    state.setdefault(
        "early_stop", {"best": math.inf, "evals_without_improvement": 0, "stopped": False}
    )
    state.setdefault("rng_ranks", [state["rng"]])  # saved before DDP: one process
    for rng in (state["rng"], *state["rng_ranks"]):
        if isinstance(rng["cuda"], list):  # every visible GPU's state: the run's was the first
            rng["cuda"] = rng["cuda"][0] if rng["cuda"] else None
    sampler = state["sampler"]
    if "generator" in sampler:  # saved before per-micro-batch data streams: one generator drew all
        streams = {0: sampler.pop("generator")}
        accum = config.get("trainer", {}).get("grad_accum", 1)
        if accum > 1:
            log.warning(
                "checkpoint from before per-micro-batch data streams: streams 1-%d start afresh",
                accum - 1,
            )
        for s in range(1, accum):
            streams[s] = torch.Generator().manual_seed(stream_seed(config["seed"], s)).get_state()
        sampler["streams"] = streams
    return state


def saved_config(cfg: DictConfig) -> dict[str, Any]:
    """The config a checkpoint keeps, resolved: a record of the run, which nothing reading the
    checkpoint takes as an instruction (see `run_config`)."""
    return OmegaConf.to_container(cfg, resolve=True)


def run_config(state: dict[str, Any]) -> DictConfig:
    """The config of a loaded checkpoint as data: interpolations in it (a checkpoint may come
    from anyone) read back as written text, never resolved from the environment."""
    return OmegaConf.create(config_as_data(state["config"]))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` (plus the format version) to `path` atomically."""
    try:
        with atomic_path(path) as tmp:
            torch.save({"format": FORMAT, **state}, tmp)
    # torch.save reports a full disk as a RuntimeError from its writer
    except (OSError, RuntimeError) as e:
        free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else 0
        raise StorageError(
            f"could not write the checkpoint {path} "
            f"({str(e).splitlines()[0] if str(e) else type(e).__name__}; "
            f"{free / 2**20:.0f} MiB free there); the previous {path.name}, if any, is intact"
        ) from None
    for stale in path.parent.glob(f".{path.name}.tmp*"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)


def _load_weights_only(path: Path) -> Any:
    """torch.load with weights_only; the few classes of an optimizer state (state_classes) are
    allowed only for a checkpoint that holds them, so that others do not import their package."""
    try:
        # tensors are read when used
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        if "pytorch_optimizer" not in str(e):
            raise
    with torch.serialization.safe_globals(state_classes()):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint, upgraded to today's layout; a missing, truncated or foreign file
    raises ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    try:
        state = _load_weights_only(path)
    except Exception as e:  # torch raises many types for a damaged file
        raise ConfigError(
            f"checkpoint {path} is unreadable (truncated or not a nanolab checkpoint): {e}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a nanolab checkpoint of format {FORMAT}")
    return upgrade(state)


# a Hugging Face GPT-2 directory's weights, beside its config.json
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def checkpoint_file(path: str | Path, key: str = "checkpoint") -> Path:
    """A run directory means its best.pt (else last.pt); a file is taken as it is. `key` is
    the config key that named it, for messages."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        weights = [name for name in HF_WEIGHTS if (p / name).is_file()]
        if weights:
            raise ConfigError(
                f"{key}={path} holds {weights[0]} but no config.json: "
                "a Hugging Face GPT-2 directory needs both"
            )
        raise ConfigError(
            f"{key}={path} is a directory without best.pt "
            "or last.pt (nor a Hugging Face config.json)"
        )
    return p

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
import os
import pickle
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig, OmegaConf

from nanolab import ConfigError, StorageError, config_as_data
from nanolab.atomic import atomic_path
from nanolab.data import stream_seed
from nanolab.model import GPT, GPTConfig
from nanolab.optim import OPTIMIZERS, state_classes

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
    "data.train_tokens": None,
    "data.label_noise": 0.0,
    "data.label_noise_seed": 0,
    "init_from": None,
    "sharpness.every": 0,
    "sharpness.k": 1,
    "sharpness.probe_tokens": 4096,
    "sharpness.lanczos_iters": 20,
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


class Checkpoint(NamedTuple):
    """A loaded checkpoint and the file it came from."""

    path: Path
    state: dict[str, Any]


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
            f"could not write the checkpoint {path} ({str(e).splitlines()[0] if str(e) else type(e).__name__}; "
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
                f"{key}={path} holds {weights[0]} but no config.json: a Hugging Face GPT-2 directory needs both"
            )
        raise ConfigError(
            f"{key}={path} is a directory without best.pt or last.pt (nor a Hugging Face config.json)"
        )
    return p


def requested_resume(resume: bool | str | None) -> bool | str | None:
    """The `resume` setting in effect: a job that SLURM requeued (submitit, at its time limit;
    SLURM_RESTART_COUNT > 0) continues as with `resume=true` whatever it was launched with."""
    if resume in (False, None) and os.environ.get("SLURM_RESTART_COUNT", "0").strip() not in (
        "",
        "0",
    ):
        return True
    return resume


def resume_checkpoint_path(resume: bool | str, run_dir: Path) -> Path | None:
    """`resume=true`: the run directory's last.pt if it exists (so re-launching a preempted
    sweep with the same sweep dir continues every job that had started); `resume=<path>`: that
    checkpoint file, or the last.pt of that run directory (after `requested_resume`)."""
    resume = requested_resume(resume)
    if resume is False or resume is None:
        return None
    if resume is True:
        return run_dir / "last.pt" if (run_dir / "last.pt").exists() else None
    path = Path(resume)
    return path / "last.pt" if path.is_dir() else path


def load_model(path: Path, device: torch.device) -> tuple[GPT, dict]:
    """The trained model of a checkpoint (in eval mode, on `device`) and the checkpoint."""
    state = load_checkpoint(path)
    model = GPT(GPTConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state


# What a resumed run must share with its checkpoint, since they change what the run computes:
# whole groups, and the named keys of others. trainer.max_iters may grow (and a schedule's
# decay_iters with it); optim.fused only picks a kernel; data paths may move.
RESUME_GROUPS = ("model", "loss", "optim", "schedule")
RESUME_KEYS = (
    "seed",
    "trainer.batch_size",
    "trainer.grad_accum",
    "trainer.grad_clip",
    "trainer.full_batch",
    "data.name",
    "data.source",
    "data.train_tokens",
    "data.label_noise",
    "data.label_noise_seed",
    "data.tokenizer",
    "data.val_fraction",
    "data.hf_path",
    "data.hf_name",
    "data.data_files",
    "data.text_field",
    "data.val_split",
)
RESUME_FREE = ("optim.fused",)


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resume_changes(path: Path, saved: dict, now: dict, allowed: list[str]) -> list[str]:
    """The differences between a checkpoint's config and the resumed run's (both resolved) in
    keys that change what a run computes, as 'key: checkpoint A vs now B'. Raises ConfigError
    listing them unless every one is in `allowed` (allow_changes); returns the allowed ones."""
    old, new = _flatten(saved), _flatten(now)
    keys = sorted(
        {k for k in old.keys() | new.keys() if k.split(".")[0] in RESUME_GROUPS or k in RESUME_KEYS}
        - set(RESUME_FREE)
    )
    # A schedule that ends with the run (its default) may follow a longer trainer.max_iters.
    follows = {
        k
        for k in ("schedule.decay_iters", "schedule.total_iters")
        if old.get(k) == old.get("trainer.max_iters") and new.get(k) == new.get("trainer.max_iters")
    }
    changed = [k for k in keys if old.get(k) != new.get(k) and k not in follows]
    refused = [k for k in changed if k not in allowed]
    if refused:
        diffs = "; ".join(f"{k}: checkpoint {old.get(k)!r} vs now {new.get(k)!r}" for k in refused)
        raise ConfigError(
            f"resume from {path} would change what the run computes: {diffs}. Resume with the checkpoint's values, "
            f"or name the keys to change on purpose: allow_changes=[{','.join(refused)}]"
        )
    fresh = bool(new.get("fresh_optimizer"))
    if (
        "optim.name" in changed
        and OPTIMIZERS.get(old.get("optim.name")) is not OPTIMIZERS.get(new.get("optim.name"))
        and not fresh
    ):
        raise ConfigError(
            f"resume from {path} with optim.name={new.get('optim.name')}: the checkpoint holds {old.get('optim.name')}'s state, which "
            f"{new.get('optim.name')} cannot continue from; add fresh_optimizer=true to start its state afresh, or resume with "
            f"optim={old.get('optim.name')}"
        )
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed] + (
        ["the optimizer state started afresh (fresh_optimizer=true)"] if fresh else []
    )


def check_compatible(path: Path, state: dict, model_config: dict) -> None:
    """Raise if the checkpoint's model differs in shape or vocabulary from the configured one."""
    saved = state["model_config"]
    diffs = [
        f"{k}: checkpoint {saved.get(k)} vs now {v}"
        for k, v in model_config.items()
        if k != "dropout" and saved.get(k) != v
    ]
    if diffs:
        raise ConfigError(
            f"checkpoint {path} does not fit the configured model/data: " + "; ".join(diffs)
        )

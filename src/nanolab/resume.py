"""Resuming: which checkpoint a run continues from, and whether it may.

`prepare_resume` is the one decision, made by the Hydra callback before Hydra writes anything
(a refused resume leaves the run directory as it was) and taken up by the Trainer: the
checkpoint is read once and the config compared with it once. A resumed run must share with
its checkpoint every key that changes what it computes (RESUME_GROUPS, RESUME_KEYS) unless
allow_changes names the key; the allowed changes are recorded in the run's summary.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig

from nanolab import ConfigError
from nanolab.checkpoint import load_checkpoint
from nanolab.config import changes_nothing, resolved_tree
from nanolab.optim import OPTIMIZERS


class Resume(NamedTuple):
    """A checkpoint to continue from, and the changes to its config that allow_changes let
    through (as 'key: A -> B')."""

    path: Path
    state: dict[str, Any]
    changes: list[str]

    def finished(self, max_iters: int) -> bool:
        """Whether the run has nothing left to do: max_iters reached or stopped early, and no
        evaluation due."""
        done = self.state["step"] >= max_iters or self.state["early_stop"]["stopped"]
        return done and not self.state["eval_due"]


# The Hydra callback's prepared resume, kept for the run's own call in this process.
_kept: tuple[tuple, Resume] | None = None


def prepare_resume(cfg: DictConfig, run_dir: Path, keep: bool = False) -> Resume | None:
    """The checkpoint `cfg.resume` asks for (None for a fresh run), read and checked against
    `cfg` (resume_changes: raises ConfigError listing what may not change). `keep=True` (the
    Hydra callback) keeps the result for the run's next call with the same config and the same
    checkpoint file, which takes it without reading the checkpoint again."""
    global _kept
    path = resume_checkpoint_path(cfg.resume, run_dir)
    if path is None:
        return None
    now = resolved_tree(cfg)
    stat = path.stat() if path.is_file() else None
    key = (
        str(path.resolve()),
        stat and (stat.st_mtime_ns, stat.st_size),
        json.dumps(now, sort_keys=True, default=str),
    )
    if _kept is not None and _kept[0] == key:
        resume, _kept = _kept[1], None
        return resume
    state = load_checkpoint(path)
    resume = Resume(
        path, state, resume_changes(path, state["config"], now, list(cfg.allow_changes))
    )
    _kept = (key, resume) if keep else None
    return resume


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
        k
        for k in old.keys() | new.keys()
        if (k.split(".")[0] in RESUME_GROUPS or k in RESUME_KEYS) and not changes_nothing(k)
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
            f"resume from {path} would change what the run computes: "
            f"{diffs}. Resume with the checkpoint's values, or name the "
            f"keys to change on purpose: allow_changes=[{','.join(refused)}]"
        )
    fresh = bool(new.get("fresh_optimizer"))
    if (
        "optim.name" in changed
        and OPTIMIZERS.get(old.get("optim.name")) is not OPTIMIZERS.get(new.get("optim.name"))
        and not fresh
    ):
        raise ConfigError(
            f"resume from {path} with optim.name={new.get('optim.name')}: the "
            f"checkpoint holds {old.get('optim.name')}'s state, which "
            f"{new.get('optim.name')} cannot continue from; add fresh_optimizer=true "
            f"to start its state afresh, or resume with optim={old.get('optim.name')}"
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

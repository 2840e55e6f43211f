"""Rare and common tokens: the vocabulary binned by how often each class is a training target.

Next-token prediction is long-tailed: at GPT-2's 50,257 classes most classes are rare. With
`token_freq.bins` > 0 every evaluation also reports, per frequency bin, the cross-entropy and
accuracy of the targets in it and their share (`val_freq/<bin>/ce`, `train_freq/<bin>/...`),
the layout of Kunstner et al. 2024 (arXiv 2402.19449, Fig. 1). Bins are named b0 (the
commonest classes) to b<k-1> (the rarest, with the classes never seen in training).

The bins are a function of the training split's counts per class alone, which preparation
stores beside the prepared data (data.TokenData.train_counts): every run and evaluation on the
same data bins classes alike. Schemes:
- equal_mass: classes sorted by count, cut so each bin holds about 1/k of the training targets
  (Kunstner et al.'s grouping); a class is never split, so one very common class can fill
  more than its share, and bins left empty are dropped;
- log: one bin per equal step of log(count) between 1 and the largest count.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from nanolab import ConfigError, DataError
from nanolab.data import TokenData
from nanolab.losses import uses_class_counts

log = logging.getLogger(__name__)

SCHEMES = ("equal_mass", "log")
# What each bin reports (over the evaluated targets in it), and what describes it.
BIN_METRICS = ("ce", "acc", "share", "classes", "min_count")


def check_token_freq(cfg: DictConfig) -> None:
    """ConfigError unless the `token_freq` keys are valid."""
    if cfg.bins < 0:
        raise ConfigError(f"token_freq.bins={cfg.bins} must be >= 0 (0 turns it off)")
    _check_scheme(cfg.scheme)


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ConfigError(
            f"token_freq.scheme={scheme!r} is not a bin scheme; choose one of {', '.join(SCHEMES)}"
        )


@dataclass(frozen=True)
class FrequencyBins:
    """Which bin each class falls in (0 the commonest), and what each bin holds."""

    of_class: np.ndarray  # (vocab,) int64
    names: tuple[str, ...]
    classes: tuple[int, ...]  # classes in each bin
    min_count: tuple[int, ...]  # the smallest training count in each bin

    def __len__(self) -> int:
        return len(self.names)


def frequency_bins(counts: np.ndarray, scheme: str, n_bins: int) -> FrequencyBins:
    """Bin the classes by their training counts (one per class of the vocabulary)."""
    _check_scheme(scheme)
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        raise DataError(
            "frequency bins need the training split's token counts, and this data has no "
            "training tokens: evaluate on data with a training split, or set token_freq.bins=0"
        )
    if scheme == "equal_mass":
        order = np.argsort(-counts, kind="stable")
        before = np.cumsum(counts[order]) - counts[order]
        ranked = np.empty_like(counts)
        ranked[order] = np.minimum(n_bins - 1, before * n_bins // total)
    else:
        edges = np.geomspace(1, counts.max() + 1, n_bins + 1)
        rarest_first = np.searchsorted(edges, np.maximum(counts, 1), side="right") - 1
        ranked = n_bins - 1 - np.clip(rarest_first, 0, n_bins - 1)
    used, of_class = np.unique(ranked, return_inverse=True)
    width = len(str(len(used) - 1))
    return FrequencyBins(
        of_class=of_class.astype(np.int64),
        names=tuple(f"b{i:0{width}d}" for i in range(len(used))),
        classes=tuple(int(n) for n in np.bincount(of_class, minlength=len(used))),
        min_count=tuple(int(counts[of_class == i].min()) for i in range(len(used))),
    )


def bin_metrics(
    bins: FrequencyBins, tokens: np.ndarray, ce_sum: np.ndarray, correct: np.ndarray
) -> dict[str, float]:
    """`<bin>/<metric>` from the per-bin sums of evaluated targets, their cross-entropy and
    their correct predictions; a bin no target fell in has ce and acc nan. The shares sum to
    1, and the bins' ce (acc) weighted by their shares is the overall ce (acc)."""
    all_tokens = tokens.sum()
    metrics = {}
    for i, name in enumerate(bins.names):
        n = tokens[i]
        metrics |= {
            f"{name}/ce": float(ce_sum[i] / n) if n else float("nan"),
            f"{name}/acc": float(correct[i] / n) if n else float("nan"),
            f"{name}/share": float(n / all_tokens) if all_tokens else float("nan"),
            f"{name}/classes": bins.classes[i],
            f"{name}/min_count": bins.min_count[i],
        }
    return metrics


def class_counts(path: str | None, train_counts: np.ndarray) -> torch.Tensor:
    """The counts per class a long-tail loss reads: `loss.class_counts` (`path`, a .npy file of
    one count per vocabulary token) when set, else the training split's."""
    if path is None:
        return torch.from_numpy(train_counts.astype(np.float64))
    try:
        counts = np.load(Path(path), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"loss.class_counts={path} could not be read as a .npy array ({e}); "
            "give a .npy file of one count per vocabulary token, or null for the training split's"
        ) from None
    if counts.ndim != 1 or len(counts) != len(train_counts):
        raise ConfigError(
            f"loss.class_counts={path} holds an array of shape {counts.shape} and the "
            f"vocabulary has {len(train_counts)} tokens: give one count per token, shape "
            f"({len(train_counts)},)"
        )
    if not np.issubdtype(counts.dtype, np.number) or not (counts >= 0).all():
        raise ConfigError(f"loss.class_counts={path} must hold counts >= 0")
    return torch.from_numpy(counts.astype(np.float64))


def configured_bins(cfg: DictConfig, data: TokenData) -> FrequencyBins | None:
    """The frequency bins the `token_freq` keys ask for on `data`, or None when they are off."""
    if not cfg.bins:
        return None
    return frequency_bins(data.train_counts(), cfg.scheme, cfg.bins)


def loss_class_counts(
    loss_cfg: DictConfig, data: TokenData, device: torch.device
) -> torch.Tensor | None:
    """The counts a long-tail loss weighs by, on `device` (None for every other loss): its
    `loss.class_counts` file, or the training split's."""
    if not uses_class_counts(loss_cfg):
        return None
    return class_counts(loss_cfg.class_counts, data.train_counts()).to(device)


def scored_loss(loss: DictConfig) -> DictConfig:
    """A run's loss as evaluate and prune score it. A checkpoint's config names files and they
    open none of them: a long-tail loss that read loss.class_counts is scored with the training
    split's counts (val/loss only; every other metric is independent of the loss)."""
    if loss.get("class_counts") is None:
        return loss
    log.warning(
        "the run weighed classes by loss.class_counts=%s; val/loss here uses the training "
        "split's counts instead (every other metric is independent of the loss)",
        loss.class_counts,
    )
    return OmegaConf.merge(loss, {"class_counts": None})

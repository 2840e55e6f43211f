"""Sparse weights: magnitude masks, Zhu & Gupta's gradual pruning during training, and the L1
and group-lasso penalties.

    python -m nanolab.train sparsity.final=0.9   # 90% of the linear weights zero at 3/4 of the run
    python -m nanolab.train sparsity.l1=1e-6 sparsity.group_lasso=1e-4

The prunable weights are every linear matrix (attention and MLP of every block, an untied
output head); the token and position embeddings (and with them a tied head) only with
`sparsity.embeddings`. Gradual pruning (Zhu & Gupta 2017, arXiv 1710.01878, eq. 1) masks, at
`start`, every `every` steps after it and at `end`, the smallest-magnitude weights so that the
fraction

    s_t = s_f * (1 - (1 - (t - start) / (end - start))^3)

of them is zero (fast while many weights are redundant, slowly near the end), then trains on at
s_f. A masked weight is set back to zero after every optimizer step: its gradient is taken and
its update undone, so it is zero in every forward pass. The masks are part of the run's
checkpoint, so a resumed run continues bit for bit.

The penalties are a term of the training objective that no data enters, added once per step
and logged apart from it as train/penalty: `l1` times the sum of |w| over the prunable
weights, and `group_lasso` times the sum of the L2 norms of each attention head's and MLP
neuron's weights (nanolab.structured's groups, the ones structured pruning removes). With Adam
an L1 subgradient shrinks weights towards zero without making them exactly zero: pruning them
by magnitude afterwards is what makes them sparse (docs/sparsity.md).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from nanolab import ConfigError
from nanolab.model import GPT
from nanolab.structured import group_norms

log = logging.getLogger("nanolab.train")
SCOPES = ("global", "layer")


def check_sparsity(cfg: DictConfig, max_iters: int, optim: str) -> None:
    """The sparsity keys' values, each in one line naming the key."""
    if not 0 <= cfg.final < 1:
        raise ConfigError(
            f"sparsity.final={cfg.final} must be a fraction in [0, 1) (the share of the "
            "prunable weights zero at the end; 0: no pruning)"
        )
    if cfg.scope not in SCOPES:
        raise ConfigError(f"sparsity.scope={cfg.scope!r} must be one of {', '.join(SCOPES)}")
    for key in ("l1", "group_lasso"):
        if not cfg[key] >= 0:
            raise ConfigError(f"sparsity.{key}={cfg[key]} must be >= 0 (0: off)")
    if cfg.final:
        end = pruning_end(cfg, max_iters)
        if cfg.start < 0 or not end > cfg.start:
            raise ConfigError(
                f"sparsity.end={end} must come after sparsity.start={cfg.start} (>= 0): "
                "the schedule cannot end before it starts"
            )
        if cfg.every <= 0:
            raise ConfigError(f"sparsity.every={cfg.every} must be > 0 (steps between prunings)")
        if optim == "schedulefree_adamw":
            raise ConfigError(
                "sparsity.final with optim=schedulefree_adamw: that optimizer evaluates and saves "
                "an average of its iterates, which the masks do not reach; use another optimizer"
            )


def pruning_end(cfg: DictConfig, max_iters: int) -> int:
    """The step of the last pruning: sparsity.end, or three quarters of the run when null."""
    return cfg.end if cfg.end is not None else max_iters * 3 // 4


def cubic_sparsity(step: int, final: float, start: int, end: int) -> float:
    """Zhu & Gupta's target sparsity after `step` steps: 0 before start, `final` from end on."""
    if step < start:
        return 0.0
    progress = min(1.0, (step - start) / (end - start))
    return final * (1 - (1 - progress) ** 3)


def prunable(model: GPT, embeddings: bool = False) -> dict[str, nn.Module]:
    """The modules whose `weight` is pruned, by name: every Linear but a tied head (which is the
    token embedding), and with `embeddings` the embeddings too."""
    tied = model.config.tie_embeddings
    modules = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and not (tied and m is model.lm_head)
    }
    if embeddings:
        modules |= {name: m for name, m in model.named_modules() if isinstance(m, nn.Embedding)}
    return modules


def magnitude_masks(
    weights: dict[str, torch.Tensor],
    sparsity: float,
    scope: str = "global",
    previous: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Boolean masks (True: kept) zeroing round(sparsity * n) of the smallest |w|: over all
    `weights` together (global) or in each tensor alone (layer). Weights masked in `previous`
    stay masked, so a growing sparsity never brings a pruned weight back."""
    scores = {}
    for name, w in weights.items():
        score = w.detach().abs().float()
        if previous is not None:
            score = score.masked_fill(~previous[name], -1.0)  # pruned first
        scores[name] = score
    if scope == "layer":
        return {name: _keep_largest(s, sparsity) for name, s in scores.items()}
    flat = _keep_largest(torch.cat([s.flatten() for s in scores.values()]), sparsity)
    sizes = [s.numel() for s in scores.values()]
    return {
        name: part.view_as(scores[name])
        for name, part in zip(scores, flat.split(sizes), strict=True)
    }


def _keep_largest(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A mask of `scores`' shape dropping its round(sparsity * n) smallest entries (the count
    torch.nn.utils.prune's L1Unstructured drops)."""
    mask = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    k = round(sparsity * scores.numel())
    if k:
        mask[torch.topk(scores.flatten(), k, largest=False).indices] = False
    return mask.view_as(scores)


def apply_masks(modules: dict[str, nn.Module], masks: dict[str, torch.Tensor]) -> None:
    """Zero the masked weights, in place (the same Parameters: a tied head and the optimizer
    keep them)."""
    with torch.no_grad():
        for name, module in modules.items():
            module.weight.mul_(masks[name])


def zero_fraction(modules: dict[str, nn.Module]) -> float:
    """The fraction of the modules' weights that are exactly zero."""
    zeros = sum(int((m.weight == 0).sum()) for m in modules.values())
    return zeros / sum(m.weight.numel() for m in modules.values())


class SparseTraining:
    """A run's sparsity: the gradual pruning schedule and its masks, and the penalties."""

    def __init__(self, cfg: DictConfig, model: GPT, max_iters: int) -> None:
        self.cfg, self.model = cfg, model
        self.modules = prunable(model, cfg.embeddings)
        self.end = pruning_end(cfg, max_iters)
        self.reached = 0.0  # the target sparsity of the last pruning
        self.masks = (
            {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in self.modules.items()}
            if cfg.final
            else None
        )

    def due(self, step: int) -> bool:
        """Whether the schedule prunes after `step` steps."""
        start, every = self.cfg.start, self.cfg.every
        return bool(self.cfg.final) and (
            step == self.end or (start <= step < self.end and (step - start) % every == 0)
        )

    def prune(self, step: int) -> dict[str, float]:
        """Mask the weights to the schedule's sparsity at `step`; returns what to log."""
        target = cubic_sparsity(step, self.cfg.final, self.cfg.start, self.end)
        if target > self.reached:
            weights = {n: m.weight for n, m in self.modules.items()}
            self.masks = magnitude_masks(weights, target, self.cfg.scope, self.masks)
            self.reached = target
            self.apply()
        return {"sparsity/target": target, "sparsity/actual": zero_fraction(self.modules)}

    def apply(self) -> None:
        """Zero the masked weights again (after an optimizer step moved them)."""
        if self.masks is not None:
            apply_masks(self.modules, self.masks)

    def penalty(self) -> torch.Tensor | None:
        """The penalty term of the objective at the current weights; None when both are off."""
        l1, group = self.cfg.l1, self.cfg.group_lasso
        if not (l1 or group):
            return None
        total = torch.zeros((), device=next(self.model.parameters()).device)
        if l1:
            total = total + l1 * sum(m.weight.abs().sum() for m in self.modules.values())
        if group:
            heads, neurons = group_norms(self.model)
            total = total + group * (heads.sum() + neurons.sum())
        return total

    def state_dict(self) -> dict[str, Any]:
        return {"reached": self.reached, "masks": self.masks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reached = state["reached"]
        if state["masks"] is not None:
            device = self.model.lm_head.weight.device
            self.masks = {n: m.to(device) for n, m in state["masks"].items()}


def build_sparsity(cfg: DictConfig, model: GPT, max_iters: int) -> SparseTraining | None:
    """The run's SparseTraining, or None when sparsity is off (nothing is added to a step)."""
    if not (cfg.final or cfg.l1 or cfg.group_lasso):
        return None
    sparse = SparseTraining(cfg, model, max_iters)
    if cfg.final and sparse.end > max_iters:  # a first segment of a longer run, say
        log.warning(
            "sparsity.end=%d is past trainer.max_iters=%d: this run stops at sparsity %.3f, "
            "short of sparsity.final=%g",
            sparse.end,
            max_iters,
            cubic_sparsity(max_iters, cfg.final, cfg.start, sparse.end),
            cfg.final,
        )
    return sparse

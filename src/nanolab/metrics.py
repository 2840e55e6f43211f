"""Evaluation that is the same for every training loss, and throughput accounting (MFU).

Runs trained with different losses are compared on what the model predicts, not on the
objective it was trained with: `ce` is the cross-entropy of softmax(logits), `acc` is top-1
next-token accuracy, `bpt` is bits per token (bits per character on character data).
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
from omegaconf import DictConfig
from torch.nn import functional as F

from nanolab.data import BatchSampler, TokenData
from nanolab.distributed import World
from nanolab.losses import LossFn
from nanolab.model import GPT, GPTConfig

# Evaluation draws the same batches at every evaluation (less noise between points of a
# curve) from its own generator, so it never disturbs the training data order.
EVAL_SEED = 1234


ECE_BINS = 15
# Temperature scaling needs the evaluation logits kept in memory; this caps them at 128 MiB of
# float32: every token of a character-level model, a few hundred tokens at GPT-2's vocabulary.
CALIBRATION_ELEMENTS = 2**25
CALIBRATION_CHUNK = 2**22  # logits per pass of the temperature fit, to bound its temporaries
TEMPERATURE_RANGE = 1e4  # fitted temperatures lie in [1e-4, 1e4]


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The T > 0 minimising the cross-entropy of softmax(logits / T) (Guo et al., ICML 2017).

    The cross-entropy is convex in b = 1/T, with derivative mean(E_p[z] - z_y) and second
    derivative mean(Var_p[z]) under p = softmax(b·z). Newton steps kept inside a shrinking
    bracket (bisection where a step would leave it) converge in a few passes over the logits,
    each costing about one cross-entropy: about a second per fit at GPT-2's vocabulary on a
    CPU, where LBFGS took up to 20 s and stalled on near-uniform logits."""
    z_y = logits.gather(1, targets[:, None]).squeeze(1)
    rows = max(1, CALIBRATION_CHUNK // logits.size(-1))

    def slope_and_curvature(b: float) -> tuple[float, float]:
        slope = curvature = 0.0
        for z, y in zip(logits.split(rows), z_y.split(rows)):
            p = (z * b).softmax(dim=-1)
            mean = (p * z).sum(-1)
            slope += float((mean - y).sum())
            curvature += float(((p * z.square()).sum(-1) - mean.square()).clamp(min=0).sum())
        return slope / len(z_y), curvature / len(z_y)

    low, high, b = 1 / TEMPERATURE_RANGE, TEMPERATURE_RANGE, 1.0
    for _ in range(100):
        slope, curvature = slope_and_curvature(b)
        if slope == 0:
            break
        low, high = (low, b) if slope > 0 else (b, high)
        newton = b - slope / curvature if curvature > 0 else math.nan
        step = newton if low < newton < high else math.sqrt(low * high)
        converged = abs(step - b) <= 1e-7 * b
        b = step
        if converged:
            break
    return 1 / b


def calibrated_ce(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Cross-entropy after temperature scaling, cross-fitted: T is fitted on one half of the
    tokens and applied to the other, both ways, so no token is scored with a T fitted on it."""
    half = len(targets) // 2
    parts = [(slice(0, half), slice(half, None)), (slice(half, None), slice(0, half))]
    total = 0.0
    for fit, score in parts:
        t = fit_temperature(logits[fit], targets[fit])
        total += float(F.cross_entropy(logits[score] / t, targets[score], reduction="sum"))
    return total / len(targets)


class TokenTotals:
    """Sums over evaluated tokens, turned into per-token metrics at the end. With `calibrate`,
    logits are also kept (up to CALIBRATION_ELEMENTS) for temperature scaling."""

    def __init__(self, calibrate: bool = False) -> None:
        self.tokens = 0
        self.loss = 0.0
        self.ce = 0.0
        self.correct = 0
        self.correct_top5 = 0
        self.brier = 0.0
        self.bin_count = torch.zeros(ECE_BINS)
        self.bin_confidence = torch.zeros(ECE_BINS)
        self.bin_correct = torch.zeros(ECE_BINS)
        self.calibrate = calibrate
        self.kept_logits: list[torch.Tensor] = []
        self.kept_targets: list[torch.Tensor] = []

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn, loss_cfg: DictConfig) -> None:
        # One contiguous copy up front: the head's logits are a view without the padded columns,
        # and every pass below over a strided view would copy it again.
        logits = logits.reshape(-1, logits.size(-1)).float().contiguous()
        targets = targets.reshape(-1)
        keep = targets != loss_cfg.ignore_index
        if not bool(keep.all()):
            logits, targets = logits[keep], targets[keep]
        n = len(targets)
        if n == 0:
            return
        self.tokens += n
        self.loss += float(loss_fn(logits, targets, loss_cfg)) * n
        # Every metric below from one log-softmax: at GPT-2's vocabulary each pass over the
        # logits of a batch costs tens of milliseconds on a CPU.
        log_probs = logits.log_softmax(dim=-1)
        log_p_target = log_probs.gather(1, targets[:, None]).squeeze(1)
        self.ce -= float(log_p_target.sum())
        top5 = log_probs.topk(min(5, logits.size(-1)), dim=-1)
        confidence, prediction = top5.values[:, 0].exp(), top5.indices[:, 0]
        hit = (prediction == targets).float()
        self.correct += int(hit.sum())
        self.correct_top5 += int((top5.indices == targets[:, None]).any(dim=-1).sum())
        # Brier score: sum_c (p_c - y_c)^2 = sum_c p_c^2 - 2 p_y + 1; p_c^2 = exp(2 log p_c), taken in
        # place as log_probs is not read again (one logits-sized temporary fewer).
        self.brier += float((log_probs.mul_(2).exp_().sum(-1) - 2 * log_p_target.exp() + 1).sum())
        bins = (confidence * ECE_BINS).long().clamp(max=ECE_BINS - 1).cpu()
        self.bin_count += torch.bincount(bins, minlength=ECE_BINS)
        self.bin_confidence += torch.bincount(bins, weights=confidence.cpu(), minlength=ECE_BINS)
        self.bin_correct += torch.bincount(bins, weights=hit.cpu(), minlength=ECE_BINS)
        if self.calibrate:
            self._keep(logits, targets)

    def _keep(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        room = CALIBRATION_ELEMENTS // logits.size(-1) - sum(len(t) for t in self.kept_targets)
        if room > 0:
            self.kept_logits.append(logits[:room].cpu())
            self.kept_targets.append(targets[:room].cpu())

    def merge(self, other: "TokenTotals") -> None:
        """Add the totals of other tokens (another rank's), as if `update` had seen them next."""
        for key in ("tokens", "loss", "ce", "correct", "correct_top5", "brier", "bin_count", "bin_confidence", "bin_correct"):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        for logits, targets in zip(other.kept_logits, other.kept_targets):
            self._keep(logits, targets)

    def compute(self, device: torch.device | None = None) -> dict[str, float]:
        """Per-token metrics; the temperature is fitted on `device` (the evaluation's GPU, say)."""
        ce = self.ce / self.tokens
        metrics = {
            "loss": self.loss / self.tokens,
            "ce": ce,
            "ppl": math.exp(min(ce, 700.0)),
            "bpt": ce / math.log(2),
            "acc": self.correct / self.tokens,
            "acc_top5": self.correct_top5 / self.tokens,
            "brier": self.brier / self.tokens,
            # expected calibration error: |confidence - accuracy| per bin, weighted by its tokens
            "ece": float((self.bin_confidence - self.bin_correct).abs().sum()) / self.tokens,
        }
        if self.kept_targets:
            logits, targets = torch.cat(self.kept_logits).to(device), torch.cat(self.kept_targets).to(device)
            metrics["ce_calibrated"] = calibrated_ce(logits, targets)
            metrics["temperature"] = fit_temperature(logits, targets)
        return metrics


def update_totals(
    totals: TokenTotals, model: GPT, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, loss_cfg: DictConfig, head_chunk: int
) -> None:
    """Add a batch to `totals`; with head_chunk > 0 the logits of that many tokens at a time."""
    if not head_chunk:
        totals.update(model(x), y, loss_fn, loss_cfg)
        return
    hidden = model(x, head=False).flatten(0, 1)
    for h, t in zip(hidden.split(head_chunk), y.flatten().split(head_chunk)):
        totals.update(model.head(h), t, loss_fn, loss_cfg)


@torch.no_grad()
def evaluate(
    model: GPT,
    data: TokenData,
    loss_fn: LossFn,
    loss_cfg: DictConfig,
    batch_size: int,
    eval_iters: int,
    autocast: contextlib.AbstractContextManager,
    head_chunk: int = 0,
    world: World = World(),
) -> dict[str, float]:
    """`val/<m>` and `train_eval/<m>` over eval_iters batches of each split, for m in loss, ce,
    ppl, bpt, acc, acc_top5, brier, ece; for val also ce_calibrated and temperature. Under DDP
    each rank evaluates a consecutive share of the batches and the totals are combined in
    order, so the metrics are those of one process evaluating them all."""
    device = next(model.parameters()).device
    mine = range(eval_iters * world.rank // world.size, eval_iters * (world.rank + 1) // world.size)
    model.eval()
    metrics = {}
    for split, prefix in (("train", "train_eval"), ("val", "val")):
        sampler = BatchSampler(getattr(data, split), batch_size, model.config.block_size, EVAL_SEED, device)
        totals = TokenTotals(calibrate=split == "val")
        for i in range(mine.stop):
            x, y = sampler.next_batch()  # drawn on every rank, so each rank's share is the same batches
            if i in mine:
                with autocast:
                    update_totals(totals, model, x, y, loss_fn, loss_cfg, head_chunk)
        if world.distributed:
            totals = functools.reduce(_merged, world.gather(totals))
        metrics |= {f"{prefix}/{k}": v for k, v in totals.compute(device).items()}
    model.train()
    return metrics


def _merged(a: TokenTotals, b: TokenTotals) -> TokenTotals:
    a.merge(b)
    return a


def flops_per_token(model: GPT) -> float:
    """Training FLOPs per token: 6N for the matmuls forward and backward, plus attention's
    12·L·H·Q·T (nanoGPT's estimate_mfu, after the PaLM paper's appendix B)."""
    c: GPTConfig = model.config
    return 6 * model.num_params() + 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * c.block_size

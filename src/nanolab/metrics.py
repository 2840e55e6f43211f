"""Evaluation that is the same for every training loss, and throughput accounting (MFU).

Runs trained with different losses are compared on what the model predicts, not on the
objective it was trained with: `ce` is the cross-entropy of softmax(logits), `acc` is top-1
next-token accuracy, `bpt` is bits per token (bits per character on character data).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from torch.nn import functional as F
from tqdm.auto import tqdm

from nanolab import Abandoned
from nanolab.data import TokenData
from nanolab.dataloader import BatchSampler
from nanolab.distributed import World
from nanolab.frequency import FrequencyBins, bin_metrics
from nanolab.losses import LossFn, get_loss
from nanolab.model import GPT

# Evaluation draws the same batches at every evaluation (less noise between points of a
# curve) from its own generator, so it never disturbs the training data order.
EVAL_SEED = 1234


ECE_BINS = 15
# Temperature scaling needs logits kept in memory; this caps them at 128 MiB of float32: every
# token of a character-level model, about 660 tokens at GPT-2's vocabulary. Tokens past the cap
# are scored as they come, at the temperature fitted on the kept ones.
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


# The sums a TokenTotals keeps, and their dtypes.
SUMS = {
    "tokens": torch.float64,
    "loss": torch.float64,
    "ce": torch.float64,
    "correct": torch.float64,
    "correct_top5": torch.float64,
    "brier": torch.float64,
    "bin_count": torch.float32,
    "bin_confidence": torch.float32,
    "bin_correct": torch.float32,
    "past_cap_ce": torch.float64,
    "past_cap_tokens": torch.float64,
}
# The sums per frequency bin a TokenTotals keeps when it is given bins.
FREQ_SUMS = ("freq_tokens", "freq_ce", "freq_correct")


class TokenTotals:
    """Sums over evaluated tokens, turned into per-token metrics at the end. The sums stay on
    the logits' device and are read once, in `compute`: reading them after every batch would
    make the host wait for the device about nine times per batch.

    With `calibrate`, the calibrated cross-entropy counts every token, each scored at a
    temperature fitted on other tokens: the first CALIBRATION_ELEMENTS logits are kept and
    cross-fitted (`calibrated_ce`); once they are full, a temperature is fitted on them and every
    later token is scored at it. At GPT-2's vocabulary the kept tokens are a few hundred: scoring
    only them made calibrated val/ce far noisier than val/ce.

    With `freq` (frequency bins of the classes) it also sums, per bin of the target's class,
    the targets, their cross-entropy and their correct predictions (`frequency`)."""

    def __init__(self, calibrate: bool = False, freq: FrequencyBins | None = None) -> None:
        self.calibrate = calibrate
        self.freq = freq
        self.bin_of_class: torch.Tensor | None = None  # freq.of_class on the logits' device
        self.sums: dict[str, torch.Tensor] = {}
        self.kept_logits: list[torch.Tensor] = []
        self.kept_targets: list[torch.Tensor] = []
        # rows kept so far, ignored targets included (counting them needs no sync)
        self.kept_rows = 0
        self.ignore_index = -1
        self.temperature: float | None = None  # fitted on the kept logits once they are full

    def _add(self, name: str, value: torch.Tensor) -> None:
        self.sums[name] = self.sums[name] + value if name in self.sums else value

    @torch.no_grad()
    def update(
        self, logits: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn, loss_cfg: DictConfig
    ) -> None:
        # One contiguous copy up front: the head's logits are a view without the padded columns,
        # and every pass below over a strided view would copy it again.
        logits = logits.reshape(-1, logits.size(-1)).float().contiguous()
        targets = targets.reshape(-1)
        self.ignore_index = loss_cfg.ignore_index
        keep = targets != loss_cfg.ignore_index
        weight = keep.float()  # ignored tokens are masked, not removed: removing them would sync
        n = keep.sum()
        self._add("tokens", n.double())
        self._add("loss", loss_fn(logits, targets, loss_cfg).double() * n)
        # Every metric below from one log-softmax: at GPT-2's vocabulary each pass over the
        # logits of a batch costs tens of milliseconds on a CPU.
        safe_targets = targets.clamp(min=0)
        log_probs = logits.log_softmax(dim=-1)
        log_p_target = log_probs.gather(1, safe_targets[:, None]).squeeze(1)
        self._add("ce", -(log_p_target * weight).sum().double())
        top5 = log_probs.topk(min(5, logits.size(-1)), dim=-1)
        confidence, prediction = top5.values[:, 0].exp(), top5.indices[:, 0]
        hit = (prediction == targets).float() * weight
        self._add("correct", hit.sum().double())
        self._add(
            "correct_top5",
            ((top5.indices == targets[:, None]).any(dim=-1).float() * weight).sum().double(),
        )
        # Brier score: sum_c (p_c - y_c)^2 = sum_c p_c^2 - 2 p_y + 1; p_c^2 = exp(2 log p_c), taken
        # in
        # place as log_probs is not read again (one logits-sized temporary fewer).
        brier = log_probs.mul_(2).exp_().sum(-1) - 2 * log_p_target.exp() + 1
        self._add("brier", (brier * weight).sum().double())
        # 0 for nan: the metrics are nan, not a crash
        bins = (confidence * ECE_BINS).long().clamp(0, ECE_BINS - 1)
        self._add("bin_count", torch.bincount(bins, weights=weight, minlength=ECE_BINS))
        self._add(
            "bin_confidence", torch.bincount(bins, weights=confidence * weight, minlength=ECE_BINS)
        )
        self._add("bin_correct", torch.bincount(bins, weights=hit, minlength=ECE_BINS))
        if self.freq is not None:
            self._add_by_frequency(safe_targets, weight, -log_p_target, hit)
        if self.calibrate:
            self._keep(logits, targets)

    def _add_by_frequency(
        self, targets: torch.Tensor, weight: torch.Tensor, ce: torch.Tensor, hit: torch.Tensor
    ) -> None:
        if self.bin_of_class is None:
            self.bin_of_class = torch.from_numpy(self.freq.of_class).to(targets.device)
        bins = self.bin_of_class[targets]
        for name, value in zip(FREQ_SUMS, (weight, ce * weight, hit)):
            zeros = torch.zeros(len(self.freq), dtype=torch.float64, device=targets.device)
            self._add(name, zeros.index_add_(0, bins, value.double()))

    def _keep(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Keep what fits under the cap; score the rest at the kept logits' temperature."""
        room = max(0, CALIBRATION_ELEMENTS // logits.size(-1) - self.kept_rows)
        if room > 0:
            self.kept_logits.append(logits[:room])
            self.kept_targets.append(targets[:room])
            self.kept_rows += len(self.kept_targets[-1])
        if room >= len(targets):
            return
        if self.temperature is None:
            self.temperature = fit_temperature(*self._kept())
        self._score_past_cap(logits[room:], targets[room:], self.temperature)

    def _kept(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept logits and targets, ignored targets left out."""
        logits, targets = torch.cat(self.kept_logits), torch.cat(self.kept_targets)
        counted = targets != self.ignore_index
        return logits[counted], targets[counted]

    def _score_past_cap(
        self, logits: torch.Tensor, targets: torch.Tensor, temperature: float
    ) -> None:
        ce = F.cross_entropy(
            logits / temperature, targets, ignore_index=self.ignore_index, reduction="sum"
        )
        self._add("past_cap_ce", ce.double())
        self._add("past_cap_tokens", (targets != self.ignore_index).sum().double())

    def combine(self, world: World, device: torch.device) -> None:
        """Under DDP, the totals of every rank's tokens: the sums on every rank, the kept
        logits (rank after rank, as one process would have kept them) on rank 0 alone. Kept
        rows that rank 0 has no room for are cross-fitted on their own rank; tokens past a
        rank's own cap were scored at that rank's temperature, so past the cap the calibrated
        cross-entropy is close to, not equal to, one process's."""
        if not world.distributed:
            return
        if self.calibrate:
            # Rank 0 keeps the first rows over the ranks in order: send only what it can keep.
            before = sum(world.gather(self.kept_rows)[: world.rank])
            room = (
                max(0, CALIBRATION_ELEMENTS // self.kept_logits[0].size(-1) - before)
                if self.kept_logits
                else 0
            )
            kept = (
                (torch.cat(self.kept_logits), torch.cat(self.kept_targets))
                if self.kept_logits
                else None
            )
            # room > 0 only when rows were kept
            mine = (kept[0][:room].cpu(), kept[1][:room].cpu()) if room else None
            if self.kept_rows > room:
                logits, targets = kept[0][room:], kept[1][room:]
                counted = targets != self.ignore_index
                if n := int(counted.sum()):
                    self._add(
                        "past_cap_ce",
                        torch.tensor(
                            calibrated_ce(logits[counted], targets[counted]) * n,
                            dtype=torch.float64,
                            device=device,
                        ),
                    )
                    self._add(
                        "past_cap_tokens",
                        torch.tensor(float(n), dtype=torch.float64, device=device),
                    )
        shapes = {name: ECE_BINS if name.startswith("bin_") else () for name in SUMS}
        if self.freq is not None:
            shapes |= {name: len(self.freq) for name in FREQ_SUMS}
        for name, shape in shapes.items():  # a rank that evaluated no batch contributes zeros
            empty = torch.zeros(shape, dtype=SUMS.get(name, torch.float64), device=device)
            world.sum_(self.sums.setdefault(name, empty))
        if self.calibrate:
            ranks = world.gather_to_main(mine)
            self.kept_logits, self.kept_targets, self.kept_rows = [], [], 0
            for kept in ranks or []:
                if kept is not None:
                    self._keep(kept[0].to(device), kept[1].to(device))

    @property
    def tokens(self) -> int:
        return int(self.sums["tokens"])

    def frequency(self) -> dict[str, float]:
        """`<bin>/<metric>` for each frequency bin (frequency.bin_metrics); {} without bins."""
        if self.freq is None:
            return {}
        sums = {
            name: self.sums[name].cpu().numpy() if name in self.sums else np.zeros(len(self.freq))
            for name in FREQ_SUMS
        }
        return bin_metrics(self.freq, *(sums[name] for name in FREQ_SUMS))

    def compute(self, device: torch.device | None = None) -> dict[str, float]:
        """Per-token metrics, read from the device at once; the temperature is fitted on
        `device` (the evaluation's GPU, say). Without kept logits (DDP ranks other than 0)
        there is no calibrated cross-entropy."""
        ece_gap = (self.sums["bin_confidence"] - self.sums["bin_correct"]).abs().sum().double()
        names = ["tokens", "loss", "ce", "correct", "correct_top5", "brier"]
        values = dict(
            zip(
                [*names, "ece_gap"], torch.stack([*(self.sums[k] for k in names), ece_gap]).tolist()
            )
        )
        tokens = values["tokens"]
        ce = values["ce"] / tokens
        metrics = {
            "loss": values["loss"] / tokens,
            "ce": ce,
            "ppl": math.exp(min(ce, 700.0)),
            "bpt": ce / math.log(2),
            "acc": values["correct"] / tokens,
            "acc_top5": values["correct_top5"] / tokens,
            "brier": values["brier"] / tokens,
            # expected calibration error: |confidence - accuracy| per bin, weighted by its tokens
            "ece": values["ece_gap"] / tokens,
        }
        if self.kept_targets:
            logits, targets = (t.to(device) for t in self._kept())
            metrics["ce_calibrated"] = calibrated_ce(logits, targets)
            metrics["temperature"] = self.temperature or fit_temperature(logits, targets)
            past_ce, past_tokens = (
                float(self.sums[k]) if k in self.sums else 0.0
                for k in ("past_cap_ce", "past_cap_tokens")
            )
            if past_tokens:
                metrics["ce_calibrated"] = (metrics["ce_calibrated"] * len(targets) + past_ce) / (
                    len(targets) + past_tokens
                )
        return metrics


def update_totals(
    totals: TokenTotals,
    model: GPT,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss_fn: LossFn,
    loss_cfg: DictConfig,
    head_chunk: int,
) -> None:
    """Add a batch to `totals`; with head_chunk > 0 the logits of that many tokens at a time."""
    if not head_chunk:
        totals.update(model(x), y, loss_fn, loss_cfg)
        return
    hidden = model(x, head=False).flatten(0, 1)
    for h, t in zip(hidden.split(head_chunk), y.flatten().split(head_chunk)):
        totals.update(model.head(h), t, loss_fn, loss_cfg)


@torch.no_grad()
def evaluate_batches(
    model: GPT,
    data: TokenData,
    *,
    loss_fn: LossFn,
    loss_cfg: DictConfig,
    batch_size: int,
    eval_iters: int,
    autocast: contextlib.AbstractContextManager,
    head_chunk: int = 0,
    world: World = World(),
    train_windows: tuple[torch.Tensor, torch.Tensor] | None = None,
    stop: Sequence[int] = (),
    freq: FrequencyBins | None = None,
) -> dict[str, float]:
    """`val/<m>` and `train_eval/<m>` over eval_iters batches of each split, for m in loss, ce,
    ppl, bpt, acc, acc_top5, brier, ece; for val also ce_calibrated and temperature (on rank 0
    alone under DDP). Under DDP each rank evaluates a consecutive share of the batches and the
    totals are combined, so the metrics are those of one process evaluating them all. The
    training batches have the training targets (label noise included); given `train_windows`
    (a full-batch run's whole training set), train_eval is over exactly those. Once `stop` is
    non-empty (a signal arrived: the trainer's stop requests) it raises Abandoned at the next
    batch, so a stop never waits for a whole evaluation. With `freq`, also `val_freq/<bin>/<m>`
    and `train_freq/<bin>/<m>` (frequency.bin_metrics)."""
    device = next(model.parameters()).device
    mine = range(eval_iters * world.rank // world.size, eval_iters * (world.rank + 1) // world.size)
    model.eval()
    metrics = {}
    try:
        for split, prefix in (("train", "train_eval"), ("val", "val")):
            totals = TokenTotals(calibrate=split == "val", freq=freq)
            batches = _my_batches(
                data,
                split,
                windows=train_windows if split == "train" else None,
                batch_size=batch_size,
                block_size=model.config.block_size,
                mine=mine,
                device=device,
            )
            for x, y in batches:
                _check_stop(stop)
                with autocast:
                    update_totals(
                        totals,
                        model,
                        x,
                        y,
                        loss_fn=loss_fn,
                        loss_cfg=loss_cfg,
                        head_chunk=head_chunk,
                    )
            totals.combine(world, device)
            metrics |= {f"{prefix}/{k}": v for k, v in totals.compute(device).items()}
            metrics |= {f"{split}_freq/{k}": v for k, v in totals.frequency().items()}
    finally:
        model.train()
    return metrics


def _my_batches(
    data: TokenData,
    split: str,
    *,
    windows: tuple[torch.Tensor, torch.Tensor] | None,
    batch_size: int,
    block_size: int,
    mine: range,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's evaluation batches of a split: the given windows in turn, else batches
    drawn from the fixed EVAL_SEED stream (every rank draws them all, so that each rank's share
    is the same batches whatever the number of ranks)."""
    if windows is not None:
        yield from zip(*(t.split(batch_size) for t in windows))
        return
    sampler = BatchSampler(
        getattr(data, split),
        batch_size=batch_size,
        block_size=block_size,
        seed=EVAL_SEED,
        device=device,
        targets=data.train_targets if split == "train" else None,
    )
    for i in range(mine.stop):
        x, y = sampler.next_batch()
        if i in mine:
            yield x, y


def _check_stop(stop: Sequence[int]) -> None:
    if stop:
        raise Abandoned(f"signal {stop[0]} arrived during an evaluation")


@torch.no_grad()
def evaluate_split(
    model: torch.nn.Module,
    tokens: np.ndarray,
    loss_cfg: DictConfig,
    batch_size: int,
    *,
    head_chunk: int = 0,
    autocast: contextlib.AbstractContextManager | None = None,
    freq: FrequencyBins | None = None,
    class_counts: torch.Tensor | None = None,
) -> dict[str, float]:
    """Metrics over every token of `tokens`, in consecutive windows of the model's context; with
    head_chunk > 0 the logits of that many tokens at a time; forward passes under `autocast`.
    With `freq`, also `freq/<bin>/<metric>` (frequency.bin_metrics); a long-tail loss reads
    `class_counts` (on the model's device)."""
    block = model.config.block_size
    n_windows = (len(tokens) - 1) // block
    device = next(model.parameters()).device
    loss_fn = get_loss(loss_cfg, class_counts)
    totals = TokenTotals(calibrate=True, freq=freq)
    for start in tqdm(
        range(0, n_windows, batch_size), desc="evaluating", unit="batch", disable=None
    ):
        rows = np.arange(start, min(start + batch_size, n_windows))[:, None] * block
        window = torch.from_numpy(tokens[rows + np.arange(block + 1)].astype(np.int64)).to(device)
        with autocast or contextlib.nullcontext():
            update_totals(
                totals,
                model,
                window[:, :-1],
                window[:, 1:],
                loss_fn=loss_fn,
                loss_cfg=loss_cfg,
                head_chunk=head_chunk,
            )
    frequency = {f"freq/{k}": v for k, v in totals.frequency().items()}
    return totals.compute(device) | {"tokens": totals.tokens} | frequency

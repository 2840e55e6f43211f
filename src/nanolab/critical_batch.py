"""The critical batch size from a batch-size sweep's steps and tokens to a target (McCandlish et
al. 2018, arXiv 1812.06162, eq. 2.11; Shallue et al. 2019, Fig. 1).

At each batch size B (tokens per step), trained at its own best learning rate, a run needs S
steps and E = B·S tokens to reach a target loss. The paper's model of that trade-off,

    (S/S_min − 1)(E/E_min − 1) = 1,  i.e.  S = S_min·(1 + B_crit/B),  B_crit = E_min/S_min,

says that below B_crit doubling the batch nearly halves the steps, and above it the extra tokens
per step are mostly wasted. `fit` finds S_min and B_crit by least squares on log S (S_min in
closed form for each B_crit on a log grid); `bootstrap` resamples the seeds of each batch size
for an interval. `lr_rule` reads the best learning rate against batch size from the same points:
lr ∝ B^k, with k = 1 for SGD's linear scaling rule (Goyal et al. 2017) and k = 1/2 for Adam's
square-root rule (Malladi et al. 2022, arXiv 2205.10287) below the critical batch size.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass

import numpy as np

from nanolab.results import Row, is_number


@dataclass(frozen=True)
class Fit:
    """S = s_min·(1 + b_crit/B): steps and tokens at the two ends of the trade-off."""

    s_min: float
    b_crit: float

    @property
    def e_min(self) -> float:
        return self.s_min * self.b_crit

    def steps(self, batch: float) -> float:
        return self.s_min * (1 + self.b_crit / batch)


def fit(points: list[tuple[float, float]]) -> Fit:
    """The model through (batch tokens, steps to target) points, at least two batch sizes."""
    if len({b for b, _ in points}) < 2:
        raise ValueError("the critical batch size needs steps to the target at two batch sizes")
    batches = np.array([b for b, _ in points], dtype=float)
    log_steps = np.log([s for _, s in points])
    # B_crit on a log grid from a hundredth of the smallest batch to a hundred times the largest
    grid = np.geomspace(batches.min() / 100, batches.max() * 100, 4001)
    offsets = log_steps[None, :] - np.log1p(grid[:, None] / batches[None, :])
    log_s_min = offsets.mean(axis=1)
    best = int(((offsets - log_s_min[:, None]) ** 2).sum(axis=1).argmin())
    return Fit(float(np.exp(log_s_min[best])), float(grid[best]))


def bootstrap(
    seeds: dict[float, list[float]], resamples: int = 1000, seed: int = 0
) -> tuple[float, float] | None:
    """A 95% percentile interval of B_crit from resampling, with replacement, the seeds' steps
    to target at each batch size; None when no batch size has two seeds."""
    if all(len(steps) < 2 for steps in seeds.values()):
        return None
    rng = random.Random(seed)
    fits = []
    for _ in range(resamples):
        points = [
            (batch, statistics.fmean(rng.choices(steps, k=len(steps))))
            for batch, steps in seeds.items()
        ]
        fits.append(fit(points).b_crit)
    fits.sort()
    return fits[int(0.025 * resamples)], fits[int(0.975 * resamples) - 1]


def best_per_batch(rows: list[Row]) -> dict[float, Row]:
    """Each batch size's configuration (its own learning rate, say) with the fewest mean steps
    to the target, among those whose every finished seed reached it. A run's batch size is its
    tokens per step: its tokens to the target over its steps."""
    best: dict[float, Row] = {}
    for row in rows:
        finished = row.finished
        if not finished or any("target/steps" not in r.values for r in finished):
            continue
        batch = round(finished[0].values["target/tokens"] / finished[0].values["target/steps"])
        if batch not in best or row.stats("target/steps")[0] < best[batch].stats("target/steps")[0]:
            best[batch] = row
    return dict(sorted(best.items()))


LR_KEY = "optim.lr"


@dataclass(frozen=True)
class LrRule:
    """Each batch size's best learning rate, the values tried at that batch size (the best is
    only known to be the optimum when it is not at an end of them), and the exponent k of
    lr ∝ B^k fitted by least squares on log-log axes."""

    best: dict[float, float]
    tried: dict[float, list[float]]
    exponent: float
    scale: float  # the fitted lr at one token per step

    def fitted(self, batch: float) -> float:
        return self.scale * batch**self.exponent

    @property
    def at_an_end(self) -> list[float]:
        """The batch sizes whose best lr is the smallest or the largest value tried there."""
        return [b for b, lr in self.best.items() if lr in (min(self.tried[b]), max(self.tried[b]))]


def lr_rule(rows: list[Row], best: dict[float, Row]) -> LrRule | None:
    """The best lr against batch size, when optim.lr is swept with numeric values and each batch
    size's best row has one; a batch size's tried values are those of the rows that differ from
    its best row in learning rates alone."""
    if any(not is_number(row.params.get(LR_KEY, "")) for row in best.values()):
        return None
    lrs = {b: float(row.params[LR_KEY]) for b, row in best.items()}
    tried = {}
    for b, chosen in best.items():
        tried[b] = sorted(
            float(row.params[LR_KEY])
            for row in rows
            if is_number(row.params.get(LR_KEY, "")) and _but_lrs(row) == _but_lrs(chosen)
        )
    slope, intercept = np.polyfit(np.log(list(lrs)), np.log(list(lrs.values())), 1)
    return LrRule(lrs, tried, float(slope), float(np.exp(intercept)))


def _but_lrs(row: Row) -> dict[str, str]:
    """A row's swept values other than learning rates (optim.lr, and any key ending in `lr`
    that moves with it, such as Muon's optim.adamw_lr): equal for the rows of one lr grid."""
    return {k: v for k, v in row.params.items() if not k.endswith("lr")}


@dataclass(frozen=True)
class CriticalBatch:
    """A sweep's critical batch size: the points (each batch size's best configuration), the
    fit through their mean steps, its interval over the seeds (None with one seed each) and
    the best lr against batch size (None unless optim.lr is swept)."""

    best: dict[float, Row]
    fit: Fit
    interval: tuple[float, float] | None
    lr: LrRule | None


def critical_batch(rows: list[Row]) -> CriticalBatch | None:
    """The critical batch size of rows that hold steps to a target (compare --target), when
    three or more batch sizes reach it; else None."""
    best = best_per_batch(rows)
    if len(best) < 3:
        return None
    fitted = fit([(b, row.stats("target/steps")[0]) for b, row in best.items()])
    seeds = {b: [r.values["target/steps"] for r in row.finished] for b, row in best.items()}
    return CriticalBatch(best, fitted, bootstrap(seeds), lr_rule(rows, best))

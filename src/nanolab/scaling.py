"""Compute-optimal model size from an IsoFLOP sweep (Chinchilla's approach 2, Hoffmann et al.
2022, arXiv 2203.15556, section 3.2 and Figure 3).

    python -m nanolab.scaling multirun/isoflop                 # isoflop.md/.csv/.png in the sweep
    python -m nanolab.scaling multirun/isoflop --recommend 1e15   # a shape for that budget

The runs trained models of several sizes at each of several FLOP budgets (trainer.flops_budget).
For each budget the final val/ce against log N is fitted by a parabola (its curvature must be
positive and its lowest run interior, else the budget is flagged "not bracketed" and left out of
the fit, with the widths to add); its vertex is N_opt, and D_opt = C / FLOPs per token at
N_opt. Power laws N_opt = k C^a and D_opt = k' C^b are fitted on log-log axes over the bracketed
budgets, with 95% bootstrap intervals (the parabolas refitted to their points plus resampled
residuals); a + b should be close to 1, since C is about 6 N D. Runs over 4 epochs of their
data or under 100 steps are flagged. N and FLOPs follow src/nanolab/flops.py's convention,
printed with every result: fitted exponents depend on it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanolab import ENDED_AS_PLANNED, ConfigError, exit_on_config_error
from nanolab.atomic import atomic_path
from nanolab.flops import CONVENTION, matrix_params
from nanolab.model import GPTConfig
from nanolab.results import find_run_dirs, is_number, read_records

log = logging.getLogger("nanolab.scaling")

MAX_EPOCHS = 4
MIN_STEPS = 100
BOOTSTRAP = 1000


@dataclass(frozen=True, kw_only=True)
class Point:
    """One finished run of the sweep."""

    budget: float  # trainer.flops_budget
    n: int  # matrix parameters
    flops_per_token: float
    tokens: int  # D: tokens trained on
    steps: int
    loss: float  # final val/ce
    epochs: float
    n_layer: int
    n_embd: int
    head_dim: int
    block_size: int
    vocab_size: int
    tokens_per_step: int

    @property
    def flags(self) -> list[str]:
        return [f"{self.epochs:.1f} epochs"] * (self.epochs > MAX_EPOCHS) + [
            f"{self.steps} steps"
        ] * (self.steps < MIN_STEPS)


# summary.json's keys a point needs, all numbers (nanolab.train writes them)
SUMMARY_KEYS = (
    "flops_budget",
    "matrix_params",
    "flops_per_token",
    "train_tokens",
    "vocab_size",
    "n_layer",
    "n_embd",
    "head_size",
    "block_size",
)


def read_points(paths: list[str], metric: str = "val/ce") -> list[Point]:
    """The finished runs under `paths` that trained to a flops_budget. Only their summary.json
    and metrics.jsonl are read, as data: nothing in a sweep folder is resolved or run."""
    points = []
    for run_dir in find_run_dirs(paths):
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            continue
        records = [r for r in read_records(run_dir / "metrics.jsonl") if metric in r]
        if (
            not isinstance(summary, dict)
            or summary.get("status") not in ENDED_AS_PLANNED
            or not all(is_number(str(summary.get(k))) for k in SUMMARY_KEYS)
            or not records
        ):
            continue
        last = records[-1]
        points.append(
            Point(
                budget=float(summary["flops_budget"]),
                n=int(summary["matrix_params"]),
                flops_per_token=float(summary["flops_per_token"]),
                tokens=int(last["tokens"]),
                steps=int(last["step"]),
                loss=float(last[metric]),
                epochs=last["tokens"] / summary["train_tokens"],
                n_layer=int(summary["n_layer"]),
                n_embd=int(summary["n_embd"]),
                head_dim=int(summary["head_size"]),
                block_size=int(summary["block_size"]),
                vocab_size=int(summary["vocab_size"]),
                tokens_per_step=int(last["tokens"]) // max(1, int(last["step"])),
            )
        )
    if not points:
        raise ConfigError(
            f"{' '.join(paths)}: no finished run trained with trainer.flops_budget and "
            f"recorded {', '.join(SUMMARY_KEYS)} (run experiment=isoflop first)"
        )
    return points


def fit_parabola(x: list[float], y: list[float]) -> tuple[float, float, float]:
    """Least-squares (a, b, c) of y = a x^2 + b x + c."""
    a, b, c = np.polyfit(x, y, 2)
    return float(a), float(b), float(c)


def fit_line(x: list[float], y: list[float]) -> tuple[float, float]:
    """Least-squares (slope, intercept)."""
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


@dataclass
class Budget:
    """One budget's IsoFLOP curve: the mean loss per size and the parabola through it."""

    budget: float
    sizes: list[tuple[int, float, float]]  # (N, mean loss, FLOPs/token), by N
    parabola: tuple[float, float, float] | None
    problem: str  # why it is not bracketed; "" when it is

    @property
    def n_opt(self) -> float:
        a, b, _ = self.parabola
        return math.exp(-b / (2 * a))

    @property
    def loss_opt(self) -> float:
        a, b, c = self.parabola
        x = -b / (2 * a)
        return a * x * x + b * x + c

    @property
    def flops_per_token_opt(self) -> float:
        """FLOPs per token at N_opt, interpolated in log-log between the sizes run."""
        logs = [(math.log(n), math.log(f)) for n, _, f in self.sizes]
        slope, intercept = fit_line([a for a, _ in logs], [b for _, b in logs])
        return math.exp(intercept + slope * math.log(self.n_opt))

    @property
    def d_opt(self) -> float:
        return self.budget / self.flops_per_token_opt


def budget_curves(points: list[Point]) -> list[Budget]:
    by_budget: dict[float, dict[int, list[Point]]] = defaultdict(lambda: defaultdict(list))
    for p in points:
        by_budget[p.budget][p.n].append(p)
    curves = []
    for budget, by_n in sorted(by_budget.items()):
        sizes = [
            (n, sum(p.loss for p in ps) / len(ps), ps[0].flops_per_token)
            for n, ps in sorted(by_n.items())
        ]
        curves.append(bracket(budget, sizes))
    return curves


def bracket(budget: float, sizes: list[tuple[int, float, float]]) -> Budget:
    """The budget's parabola, or the reason it cannot locate N_opt."""
    if len(sizes) < 3:
        return Budget(budget, sizes, None, f"{len(sizes)} sizes (3 or more needed)")
    lowest = min(range(len(sizes)), key=lambda i: sizes[i][1])
    parabola = fit_parabola([math.log(n) for n, _, _ in sizes], [loss for _, loss, _ in sizes])
    if parabola[0] <= 0:
        return Budget(budget, sizes, None, "the curve bends down (no minimum)")
    if lowest == 0:
        return Budget(budget, sizes, parabola, "lowest at the smallest size: add smaller")
    if lowest == len(sizes) - 1:
        return Budget(budget, sizes, parabola, "lowest at the largest size: add larger")
    return Budget(budget, sizes, parabola, "")


@dataclass
class PowerLaw:
    exponent: float
    coefficient: float  # log k
    interval: tuple[float, float]  # 95% bootstrap interval of the exponent

    def at(self, c: float) -> float:
        return math.exp(self.coefficient + self.exponent * math.log(c))


def fit_laws(curves: list[Budget], seed: int = 0) -> tuple[PowerLaw, PowerLaw, PowerLaw]:
    """N_opt, D_opt and the loss at the optimum against C over the bracketed budgets."""
    good = [c for c in curves if not c.problem]
    if len(good) < 2:
        raise ConfigError(
            f"{len(good)} bracketed budget(s): a power law needs two or more (see the "
            "'not bracketed' budgets; add the sizes they ask for)"
        )
    logc = [math.log(c.budget) for c in good]
    laws = [
        fit_line(logc, [math.log(c.n_opt) for c in good]),
        fit_line(logc, [math.log(c.d_opt) for c in good]),
        fit_line(logc, [math.log(c.loss_opt) for c in good]),
    ]
    rng = random.Random(seed)
    samples: list[list[float]] = [[], [], []]
    residuals = {
        id(c): [loss - _eval(c.parabola, math.log(n)) for n, loss, _ in c.sizes] for c in good
    }
    for _ in range(BOOTSTRAP):
        redrawn = []
        for c in good:
            sizes = [
                (n, _eval(c.parabola, math.log(n)) + rng.choice(residuals[id(c)]), f)
                for n, _, f in c.sizes
            ]
            b = bracket(c.budget, sizes)
            if b.parabola is None or b.parabola[0] <= 0:
                break
            redrawn.append(b)
        else:
            samples[0].append(fit_line(logc, [math.log(b.n_opt) for b in redrawn])[0])
            samples[1].append(fit_line(logc, [math.log(b.d_opt) for b in redrawn])[0])
            samples[2].append(fit_line(logc, [math.log(b.loss_opt) for b in redrawn])[0])
    return tuple(
        PowerLaw(slope, intercept, _percentiles(draws))
        for (slope, intercept), draws in zip(laws, samples, strict=True)
    )


def _eval(parabola: tuple[float, float, float], x: float) -> float:
    a, b, c = parabola
    return a * x * x + b * x + c


def _percentiles(draws: list[float]) -> tuple[float, float]:
    if len(draws) < 20:
        return math.nan, math.nan
    draws = sorted(draws)
    return draws[int(0.025 * len(draws))], draws[int(0.975 * len(draws)) - 1]


def shape_for(n: float, n_layer: int, head_dim: int, vocab_size: int, block_size: int) -> int:
    """The n_embd (a multiple of head_dim) at depth n_layer whose N is closest to n."""
    best, width = None, head_dim
    while True:
        size = matrix_params(
            GPTConfig(
                n_layer=n_layer,
                n_head=width // head_dim,
                n_embd=width,
                vocab_size=vocab_size,
                block_size=block_size,
            )
        )
        if best is None or abs(math.log(size / n)) < abs(math.log(best[1] / n)):
            best = (width, size)
        if size > n:
            return best[0]
        width += head_dim


def table(curves: list[Budget], points: list[Point]) -> str:
    flagged = [p for p in points if p.flags]
    lines = [
        "| C (FLOPs) | sizes N run | N_opt | D_opt (tokens) | tokens/parameter | val/ce at N_opt "
        "| epochs at N_opt | bracketed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    train_tokens = points[0].tokens / points[0].epochs
    for c in curves:
        run = " ".join(f"{n / 1e3:.0f}k" for n, _, _ in c.sizes)
        if c.parabola is None or c.problem:
            lines.append(f"| {c.budget:.3g} | {run} | | | | | | no: {c.problem} |")
            continue
        lines.append(
            f"| {c.budget:.3g} | {run} | {c.n_opt:,.0f} | {c.d_opt:,.0f} | "
            f"{c.d_opt / c.n_opt:.1f} | {c.loss_opt:.4f} | {c.d_opt / train_tokens:.1f} | yes |"
        )
    if flagged:
        lines.append(
            "\nFlagged runs (over 4 epochs of the data, or under 100 steps): "
            + "; ".join(
                f"C={p.budget:.3g} N={p.n / 1e3:.0f}k: {', '.join(p.flags)}" for p in flagged
            )
        )
    return "\n".join(lines)


def laws_text(laws: tuple[PowerLaw, PowerLaw, PowerLaw]) -> str:
    n_law, d_law, loss_law = laws
    return "\n".join(
        [
            f"N_opt ∝ C^a, a = {n_law.exponent:.3f} (95% bootstrap "
            f"{n_law.interval[0]:.3f} to {n_law.interval[1]:.3f})",
            f"D_opt ∝ C^b, b = {d_law.exponent:.3f} (95% bootstrap "
            f"{d_law.interval[0]:.3f} to {d_law.interval[1]:.3f})",
            f"a + b = {n_law.exponent + d_law.exponent:.3f} (C ≈ 6ND gives 1)",
            f"val/ce at N_opt ∝ C^{loss_law.exponent:.3f}",
            f"convention: {CONVENTION}",
        ]
    )


def plot(curves: list[Budget], laws: tuple | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), constrained_layout=True)
    colors = plt.cm.viridis([i / max(1, len(curves) - 1) for i in range(len(curves))])
    for c, color in zip(curves, colors, strict=True):
        ns = [n for n, _, _ in c.sizes]
        axes[0].plot(
            ns,
            [loss for _, loss, _ in c.sizes],
            "o",
            color=color,
            label=f"C={c.budget:.2g}" + ("" if not c.problem else " (not bracketed)"),
        )
        if c.parabola is not None:
            lo, hi = math.log(min(ns)), math.log(max(ns))
            xs = [lo + (hi - lo) * i / 50 for i in range(51)]
            axes[0].plot(
                [math.exp(x) for x in xs],
                [_eval(c.parabola, x) for x in xs],
                color=color,
                alpha=0.7,
                linestyle="-" if not c.problem else ":",
            )
            if not c.problem:
                axes[0].plot(c.n_opt, c.loss_opt, "*", color=color, markersize=14)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("N (matrix parameters)")
    axes[0].set_ylabel("final val/ce (nats)")
    axes[0].set_title("IsoFLOP curves: one per budget, * its N_opt")
    axes[0].legend(fontsize=8)
    good = [c for c in curves if not c.problem]
    for ax, value, name, law in (
        (axes[1], lambda c: c.n_opt, "N_opt", laws[0] if laws else None),
        (axes[2], lambda c: c.d_opt, "D_opt (tokens)", laws[1] if laws else None),
    ):
        ax.plot([c.budget for c in good], [value(c) for c in good], "o")
        if law is not None:
            cs = [good[0].budget, good[-1].budget]
            ax.plot(
                cs,
                [law.at(c) for c in cs],
                "-",
                label=f"∝ C^{law.exponent:.2f} [{law.interval[0]:.2f}, {law.interval[1]:.2f}]",
            )
            ax.legend(fontsize=8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("C (training FLOPs)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    fig.suptitle(CONVENTION, fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def extensions(curves: list[Budget], points: list[Point], head_dim: int) -> list[str]:
    """For each unbracketed budget, the next width beyond its lowest end ("budget width")."""
    out = []
    for c in curves:
        widths = sorted({p.n_embd for p in points if p.budget == c.budget})
        if c.problem.endswith("add smaller") and widths[0] > head_dim:
            out.append(f"{c.budget:g} {max(head_dim, widths[0] // 2 // head_dim * head_dim)}")
        elif c.problem.endswith("add larger"):
            out.append(f"{c.budget:g} {widths[-1] * 2}")
    return out


def recommend(c: float, laws: tuple, curves: list[Budget], points: list[Point]) -> str:
    n_law, d_law, loss_law = laws
    n, d = n_law.at(c), d_law.at(c)
    good = [b.budget for b in curves if not b.problem]
    ref = points[0]
    width = shape_for(n, ref.n_layer, ref.head_dim, ref.vocab_size, ref.block_size)
    inside = min(good) <= c <= max(good)
    return "\n".join(
        [
            f"budget C = {c:.3g} FLOPs ({'within' if inside else 'an EXTRAPOLATION beyond'} "
            f"the fitted budgets {min(good):.3g} to {max(good):.3g})",
            f"N_opt = {n:,.0f} matrix parameters: n_layer={ref.n_layer}, n_embd={width} "
            f"(the sweep's depth and head size {ref.head_dim})",
            f"D_opt = {d:,.0f} tokens = {d / ref.tokens_per_step:,.0f} steps of "
            f"{ref.tokens_per_step} tokens ({d / (ref.tokens / ref.epochs):.1f} epochs of the "
            "data)",
            f"expected val/ce = {loss_law.at(c):.3f}",
            f"train it: python -m nanolab.train experiment=isoflop model.n_embd={width} "
            f"trainer.flops_budget={c:.3g}",
        ]
    )


def scaling(paths: list[str], out: Path | None = None, recommend_c: float | None = None) -> str:
    """Fit and write isoflop.md, isoflop.csv and isoflop.png; returns the text printed."""
    if recommend_c is not None and not recommend_c > 0:
        raise ConfigError(f"--recommend {recommend_c:g} must be a budget in FLOPs > 0")
    points = read_points(paths)
    curves = budget_curves(points)
    out = out or Path(paths[0])
    parts = [table(curves, points)]
    laws = None
    try:
        laws = fit_laws(curves)
        parts.append(laws_text(laws))
    except ConfigError as e:
        parts.append(str(e))
    more = extensions(curves, points, points[0].head_dim)
    if more:
        parts.append("widths to add (budget width): " + "; ".join(more))
    if recommend_c is not None and laws is not None:
        parts.append(recommend(recommend_c, laws, curves, points))
    text = "\n\n".join(parts)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "isoflop.md") as tmp:
        tmp.write_text(f"# IsoFLOP fit of {' '.join(paths)}\n\n{text}\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["budget", "n", "n_embd", "n_layer", "tokens", "steps", "epochs", "val_ce"])
    for p in sorted(points, key=lambda p: (p.budget, p.n)):
        writer.writerow(
            [
                f"{p.budget:g}",
                p.n,
                p.n_embd,
                p.n_layer,
                p.tokens,
                p.steps,
                f"{p.epochs:.2f}",
                f"{p.loss:.5f}",
            ]
        )
    with atomic_path(out / "isoflop.csv") as tmp:
        tmp.write_text(buffer.getvalue())
    with atomic_path(out / "extend.txt") as tmp:
        tmp.write_text("".join(f"{line}\n" for line in more))
    plot(curves, laws, out / "isoflop.png")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nanolab.scaling", description=__doc__.split("\n")[0]
    )
    parser.add_argument("paths", nargs="+", help="the IsoFLOP sweep's directory (or run dirs)")
    parser.add_argument("--out", type=Path, help="where to write (default: the first path)")
    parser.add_argument(
        "--recommend", type=float, metavar="C", help="print a shape and steps for C FLOPs"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with exit_on_config_error(log):
        print(scaling(args.paths, args.out, args.recommend))


if __name__ == "__main__":
    main()

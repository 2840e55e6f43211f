"""The figures of nanolab.compare: curves against tokens, final values, metric against a swept
value, against model size, sharpness against step."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nanolab.atomic import atomic_path
from nanolab.critical_batch import CriticalBatch, LrRule
from nanolab.report import human
from nanolab.results import (
    B_SIMPLE,
    METRICS,
    Row,
    RunResult,
    Target,
    frequency_bins_of,
    natural_key,
)


def _log_axis(axis: Any, fmt: Callable[[float, Any], str] = lambda v, _pos=None: f"{v:g}") -> None:
    """Log-scale `axis` with plain tick labels (1k, 0.003; also at 2 and 5 between powers of
    ten): matplotlib's own are mathtext, which compare turns off as labels may hold a '$'."""
    from matplotlib.ticker import FuncFormatter

    (axis.axes.set_xscale if axis.axis_name == "x" else axis.axes.set_yscale)("log")
    axis.set_major_formatter(FuncFormatter(fmt))
    axis.set_minor_formatter(
        FuncFormatter(lambda v, pos: fmt(v, pos) if f"{v:.1g}"[0] in "25" else "")
    )


def _series(run: RunResult, metric: str) -> dict[int, float]:
    return {r["step"]: r[metric] for r in run.records if metric in r}


UNITS = {
    "val/ce": "nats/token",
    "val/ce_calibrated": "nats/token",
    "val/acc": "accuracy",
    "val/ece": "expected calibration error",
    "best/val/ce": "nats/token",
    "val/temperature": "temperature",
    "perf/tokens_per_s": "tokens/s",
    "wall_time_s": "s",
    "train/loss": "loss (log scale)",
}


def _mean_curve(runs: list[RunResult], metric: str) -> tuple[Any, Any, Any] | None:
    """(tokens, mean, std or None) over the runs' common evaluation points of `metric`."""
    import numpy as np

    series = [{r["tokens"]: r[metric] for r in run.records if metric in r} for run in runs]
    points = sorted(set.intersection(*(set(s) for s in series))) if series else []
    if not points:
        return None
    ys = np.array([[s[t] for t in points] for s in series])
    return np.array(points), ys.mean(axis=0), ys.std(axis=0, ddof=1) if len(runs) > 1 else None


def _zoom_limits(curves: list[tuple[Any, Any, Any]]) -> tuple[float, float] | None:
    """y-limits showing the second half of training of the better half of the configurations
    (at least two): a run far behind (plain MSE beside cross-entropy, say) must not flatten the
    others' gaps."""
    finals = sorted(float(mean[-1]) for _, mean, _ in curves)
    if len(finals) < 2:
        return None
    low = min(
        float(m - (0 if s is None else s[i]))
        for tokens, mean, s in curves
        for i, (t, m) in enumerate(zip(tokens, mean))
        if t >= tokens[-1] / 2
    )
    middle = finals[max(1, (len(finals) - 1) // 2)]  # at least the two best
    high = middle + max(1.5 * (middle - finals[0]), 0.02 * abs(finals[0]))
    return low - 0.05 * (high - low), high


def plot_curves(rows: list[Row], keys: list[str], path: Path) -> None:
    """Each configuration's mean curve over its finished seeds against tokens seen, with a band
    of one standard deviation: val/ce, calibrated val/ce and val/acc in full (top), then val/ce
    and calibrated val/ce zoomed on the better configurations, and each run's own training loss."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    panels = [
        ("val/ce", "val/ce", False),
        ("val/ce_calibrated", "val/ce, calibrated (temperature fitted)", False),
        ("val/acc", "val/acc (next-token accuracy)", False),
        ("val/ce", "val/ce, zoom: better half of the configurations", True),
        ("val/ce_calibrated", "calibrated val/ce, zoom", True),
        ("train/loss", "train/loss (each run's own objective)", False),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(18, 8.5), layout="constrained")
    palette = plt.cm.tab10.colors if len(rows) <= 10 else plt.cm.tab20.colors * 5
    colors = dict(zip((row.label(keys) for row in rows), palette))
    for ax, (metric, title, zoom) in zip(axes.flat, panels):
        curves = []
        for row in rows:
            runs = row.finished or row.runs
            curve = _mean_curve(runs, metric)
            if curve is None:
                continue
            tokens, mean, std = curve
            curves.append(curve)
            color = colors[row.label(keys)]
            ax.plot(tokens, mean, color=color, label=f"{row.label(keys)} (n={len(runs)})", lw=1.4)
            if std is not None:
                ax.fill_between(tokens, mean - std, mean + std, color=color, alpha=0.2, lw=0)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(UNITS[metric])
        ax.set_xlabel("tokens seen")
        ax.xaxis.set_major_formatter(FuncFormatter(human))
        ax.grid(alpha=0.3)
        if not curves:
            ax.text(
                0.5,
                0.5,
                "not logged by these runs",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
        elif zoom and (limits := _zoom_limits(curves)):
            ax.set_ylim(*limits)
            ax.set_xlim(
                max(float(c[0][-1]) for c in curves) / 2, max(float(c[0][-1]) for c in curves)
            )
        elif metric == "train/loss":
            _log_axis(ax.yaxis)  # objectives differ in scale by orders of magnitude (mse vs ce)
        # the untrained model's ln V would set the scale: start after it
        elif metric.startswith("val/ce"):
            later = [float(v) for tokens, mean, _ in curves for t, v in zip(tokens, mean) if t > 0]
            if later and max(later) > min(later):
                ax.set_ylim(min(later) - 0.02 * (max(later) - min(later)), max(later))
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    _save_figure(fig, path)


def plot_final_values(
    rows: list[Row],
    keys: list[str],
    path: Path,
    metrics: tuple[str, ...] = ("val/ce_calibrated", "val/acc"),
) -> None:
    """Each configuration's final value of each metric: mean ± std over seeds, every seed a dot."""
    import matplotlib.pyplot as plt

    shown = [row for row in rows if row.finished]
    fig, axes = plt.subplots(
        1,
        len(metrics),
        figsize=(5.5 * len(metrics), 0.45 * len(shown) + 1.8),
        constrained_layout=True,
        squeeze=False,
    )
    labels = [row.label(keys) for row in shown]
    for ax, metric in zip(axes[0], metrics):
        for y, row in enumerate(shown):
            mean, std, n = row.stats(metric)
            if not n:
                continue
            ax.errorbar(
                mean, y, xerr=0.0 if math.isnan(std) else std, fmt="o", color="C0", capsize=4
            )
            ax.plot(
                [r.values[metric] for r in row.finished if metric in r.values],
                [y] * n,
                "|",
                color="k",
                ms=10,
                alpha=0.6,
            )
        ax.set_yticks(range(len(shown)), labels if metric == metrics[0] else [], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"final {metric} ({UNITS.get(metric, '')})")
        ax.grid(alpha=0.3, axis="x")
    axes[0][0].set_title("mean ± std over seeds; ticks: each seed", fontsize=9)
    _save_figure(fig, path)


def plot_sharpness(runs: list[RunResult], keys: list[str], path: Path) -> bool:
    """Each run's sharpness against step (for Adam/AdamW the preconditioned sharpness, which
    its threshold is about), with the optimizer's stability threshold (2/η for GD) dashed in
    the same colour. Returns False, drawing nothing, when no run measured sharpness."""
    import matplotlib.pyplot as plt

    measured = [run for run in runs if any("sharpness/top1" in r for r in run.records)]
    if not measured:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for run, color in zip(measured, plt.cm.tab10.colors * 10):
        precond = any("sharpness/precond_top1" in r for r in run.records)
        series = _series(run, "sharpness/precond_top1" if precond else "sharpness/top1")
        label = ", ".join(f"{k}={run.params[k]}" for k in keys) or run.dir.name
        ax.plot(
            list(series),
            list(series.values()),
            color=color,
            lw=1.3,
            label=f"{label}, seed {run.seed}" + (" (preconditioned)" if precond else ""),
        )
        threshold = _series(run, "sharpness/threshold")
        if threshold:
            ax.plot(list(threshold), list(threshold.values()), color=color, ls="--", lw=1.0)
    _log_axis(ax.yaxis)
    ax.set_xlabel("step")
    ax.set_ylabel("top Hessian eigenvalue of the training loss")
    ax.set_title("sharpness; dashed: each run's stability threshold (2/η for GD)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    _save_figure(fig, path)
    return True


def plot_metric_vs_value(
    rows: list[Row],
    keys: list[str],
    key: str,
    metric: str,
    path: Path,
    panels: str | None = None,
) -> None:
    """`metric` against the numeric values of a swept `key`, one line per value of the others;
    with `panels`, one panel per value of that key (SP beside μP, say) on shared axes."""
    import matplotlib.pyplot as plt

    panel_values = (
        sorted({row.params[panels] for row in rows}, key=natural_key) if panels else [None]
    )
    others = [k for k in keys if k not in (key, panels)]
    fig, axes = plt.subplots(
        1,
        len(panel_values),
        figsize=(6 * len(panel_values), 4.2),
        constrained_layout=True,
        sharey=True,
        squeeze=False,
    )
    xs = [float(row.params[key]) for row in rows]
    for ax, value in zip(axes[0], panel_values, strict=True):
        lines: dict[str, list[tuple[float, float, float]]] = {}
        for row in rows:
            mean, std, n = row.stats(metric)
            if n and (panels is None or row.params[panels] == value):
                lines.setdefault(row.label(others), []).append(
                    (float(row.params[key]), mean, 0.0 if math.isnan(std) else std)
                )
        # no two lines alike
        palette = plt.cm.tab10.colors if len(lines) <= 10 else plt.cm.tab20.colors * 5
        for (label, points), color in zip(
            sorted(lines.items(), key=lambda item: natural_key(item[0])), palette
        ):
            x, y, err = zip(*sorted(points))
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label, color=color)
            higher_better = next(h for k, _, _, h in METRICS if k == metric)
            best = (max if higher_better else min)(range(len(y)), key=y.__getitem__)
            ax.plot(x[best], y[best], marker="*", markersize=14, color=color)
        if min(xs) > 0 and max(xs) / min(xs) >= 10:
            _log_axis(ax.xaxis)
        ax.set_xlabel(key)
        if panels:
            ax.set_title(f"{panels}={value}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(f"final {metric} ({UNITS.get(metric, '')}), mean ± std; * best")
    _save_figure(fig, path)


def plot_against_size(rows: list[Row], keys: list[str], path: Path) -> None:
    """Final val (solid) and train_eval (dashed) cross-entropy and accuracy against parameter
    count (log x), mean ± std over seeds, one line per value of the swept keys other than the
    width (model.n_embd, else the first model key swept; so a width x depth sweep has a line per
    depth): where a model starts to fit its training set and what that does on val. A
    line whose models fit their training set (train_eval/acc reaching 0.9) gets its
    interpolation point marked, dotted: the smallest size within INTERPOLATED of its best
    train_eval/acc."""
    import matplotlib.pyplot as plt

    size_key = (
        "model.n_embd"
        if "model.n_embd" in keys
        else next(k for k in keys if k.startswith("model."))
    )
    others = [k for k in keys if k != size_key]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    groups: dict[str, list[Row]] = {}
    for row in rows:
        if row.stats("params")[2]:
            groups.setdefault(row.label(others), []).append(row)
    for (label, members), color in zip(sorted(groups.items()), plt.cm.tab10.colors * 10):
        members.sort(key=lambda r: r.stats("params")[0])
        x = [r.stats("params")[0] for r in members]
        for ax, (val, train, unit) in zip(
            axes,
            [("val/ce", "train_eval/ce", "nats/token"), ("val/acc", "train_eval/acc", "accuracy")],
        ):
            for metric, style, split in ((val, "-", "val"), (train, "--", "train")):
                mean = [r.stats(metric)[0] for r in members]
                std = [
                    0.0 if math.isnan(r.stats(metric)[1]) else r.stats(metric)[1] for r in members
                ]
                ax.errorbar(
                    x,
                    mean,
                    yerr=std,
                    fmt="o" + style,
                    color=color,
                    capsize=3,
                    label=f"{label} ({split})",
                )
            ax.set_ylabel(f"final {val.split('/')[1]} ({unit})")
        if (point := interpolation_point(members)) is not None:
            for ax in axes:
                ax.axvline(
                    point,
                    color=color,
                    ls=":",
                    lw=1.5,
                    label=f"{label} (interpolation: {human(point)} params)",
                )
    for ax in axes:
        _log_axis(ax.xaxis, human)
        ax.set_xlabel("parameters")
        ax.grid(alpha=0.3, which="both")
    # the accuracy panel's middle right is empty once models fit
    axes[1].legend(fontsize=7, loc="center right")
    axes[0].set_title("solid: val; dashed: train_eval (the training set)", fontsize=9)
    _save_figure(fig, path)


# How close to its best train_eval/acc a size must come to count as fitting the training set.
INTERPOLATED = 0.01


def interpolation_point(rows: list[Row]) -> float | None:
    """The parameter count of the smallest of `rows` (sizes of one line) whose mean
    train_eval/acc is within INTERPOLATED of the line's best, if that best reaches 0.9."""
    fits = [(r.stats("params")[0], r.stats("train_eval/acc")[0]) for r in rows]
    fits = [(n, acc) for n, acc in fits if not math.isnan(acc)]
    best = max((acc for _, acc in fits), default=math.nan)
    if not best >= 0.9:
        return None
    return min(n for n, acc in fits if acc >= best - INTERPOLATED)


def _save_figure(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def plot_steps_vs_tokens(critical: CriticalBatch, target: Target, path: Path) -> None:
    """Steps against tokens to the target, one point per batch size at its best configuration
    (Shallue et al. 2019, Fig. 1), with the fitted S = S_min·(1 + B_crit/B)."""
    import matplotlib.pyplot as plt

    best, fitted = critical.best, critical.fit
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for batch, row in best.items():
        steps, steps_std, _ = row.stats("target/steps")
        ax.errorbar(
            batch * steps,
            steps,
            yerr=None if math.isnan(steps_std) else steps_std,
            fmt="o",
            color="C0",
            capsize=3,
        )
        ax.annotate(
            f"B={batch:g}", (batch * steps, steps), textcoords="offset points", xytext=(5, 5)
        )
    batches = [min(best) / 4 * (16 * max(best) / min(best)) ** (i / 99) for i in range(100)]
    ax.plot(
        [b * fitted.steps(b) for b in batches],
        [fitted.steps(b) for b in batches],
        color="C1",
        label=f"S = S_min(1 + B_crit/B), B_crit = {fitted.b_crit:.3g} tokens",
    )
    _log_axis(ax.xaxis, human)
    _log_axis(ax.yaxis)
    ax.set_xlabel(f"tokens to {target}")
    ax.set_ylabel(f"steps to {target}")
    ax.legend()
    _save_figure(fig, path)


def plot_b_simple(critical: CriticalBatch, path: Path) -> None:
    """The gradient noise scale B_simple against tokens seen, for each batch size's best
    configuration (its first seed), beside the fitted B_crit: the noise scale should grow as the
    loss falls (McCandlish et al. 2018). Nothing is drawn when no run logged it."""
    import matplotlib.pyplot as plt

    curves = {}
    for batch, row in critical.best.items():
        records = row.finished[0].records
        points = [(r["tokens"], r[B_SIMPLE]) for r in records if r.get(B_SIMPLE, 0) > 0]
        if points:
            curves[batch] = points
    if not curves:
        return
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for i, (batch, points) in enumerate(curves.items()):
        ax.plot(*zip(*points), color=f"C{i}", lw=1, label=f"B = {batch:g} tokens/step")
    ax.axhline(critical.fit.b_crit, color="k", ls="--", lw=1, label="fitted B_crit")
    _log_axis(ax.xaxis, human)
    _log_axis(ax.yaxis)
    ax.set_xlabel("tokens")
    ax.set_ylabel("B_simple (tokens), positive values")
    ax.legend()
    _save_figure(fig, path)


def plot_lr_vs_batch(rule: LrRule, b_crit: float, path: Path) -> None:
    """Each batch size's best learning rate on log-log axes, the values tried there, the fitted
    power law, the linear and square-root rules drawn through the smallest batch's point, and
    the fitted critical batch size (the rules are claims about batches below it)."""
    import matplotlib.pyplot as plt

    batches = list(rule.best)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for batch, tried in rule.tried.items():
        ax.scatter([batch] * len(tried), tried, marker="x", color="0.6", zorder=1)
    ax.scatter(batches, list(rule.best.values()), color="C0", zorder=2, label="best lr")
    first, lr0 = batches[0], rule.best[batches[0]]
    line = [first * (batches[-1] / first) ** (i / 20) for i in range(21)]
    ax.plot(line, [rule.fitted(b) for b in line], label=f"fit: lr ∝ B^{rule.exponent:.2f}")
    for k, style, label in [(1.0, ":", "linear rule: lr ∝ B"), (0.5, "--", "square-root rule")]:
        ax.plot(line, [lr0 * (b / first) ** k for b in line], style, color="0.3", label=label)
    ax.axvline(b_crit, color="C3", lw=1, ls="-.", label=f"B_crit = {human(b_crit)} tokens")
    _log_axis(ax.xaxis, human)
    _log_axis(ax.yaxis)
    ax.set_xlabel("tokens per step")
    ax.set_ylabel("learning rate (x: values tried)")
    ax.legend()
    _save_figure(fig, path)


def plot_frequency(rows: list[Row], keys: list[str], path: Path, split: str = "val") -> None:
    """Final cross-entropy and accuracy per token-frequency bin (b0 the commonest), a line per
    configuration: mean over seeds with a bar of one standard deviation."""
    import matplotlib.pyplot as plt

    bins = frequency_bins_of(rows, split)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for i, row in enumerate(r for r in rows if r.finished):
        for ax, metric in zip(axes, ("ce", "acc")):
            stats = [row.stats(f"{split}_freq/{b}/{metric}") for b in bins]
            ax.errorbar(
                range(len(bins)),
                [m for m, _, _ in stats],
                yerr=[0 if math.isnan(s) else s for _, s, _ in stats],
                marker="o",
                ms=4,
                capsize=3,
                color=f"C{i % 10}",
                label=row.label(keys),
            )
    for ax, metric in zip(axes, ("ce", "acc")):
        ax.set_xticks(range(len(bins)), bins)
        ax.set_xlabel("frequency bin (b0: the commonest classes)")
        ax.set_ylabel(f"final {split} {metric}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[0].set_title(f"{split} cross-entropy per bin, mean ± std over seeds", fontsize=9)
    _save_figure(fig, path)


def plot_frequency_curves(rows: list[Row], keys: list[str], path: Path) -> None:
    """Kunstner et al. 2024's Fig. 1 layout: a panel per configuration (columns) and split
    (rows: train, then val, as logged), each bin's cross-entropy against tokens seen, the mean
    over seeds; the commonest bin darkest."""
    import matplotlib.pyplot as plt

    shown = [row for row in rows if row.finished]
    splits = [s for s in ("train", "val") if frequency_bins_of(rows, s)]
    fig, axes = plt.subplots(
        len(splits),
        len(shown),
        figsize=(3.6 * len(shown) + 1, 3.2 * len(splits)),
        sharey="row",
        constrained_layout=True,
        squeeze=False,
    )
    cmap = plt.get_cmap("viridis")
    for r, split in enumerate(splits):
        bins = frequency_bins_of(rows, split)
        for c, row in enumerate(shown):
            ax = axes[r][c]
            for i, name in enumerate(bins):
                curve = _mean_curve(row.finished, f"{split}_freq/{name}/ce")
                if curve is not None:
                    color = cmap(i / max(1, len(bins) - 1))
                    ax.plot(curve[0], curve[1], color=color, label=name)
            ax.set_title(row.label(keys), fontsize=8)
            ax.set_xlabel("tokens seen")
            ax.grid(alpha=0.3)
        axes[r][0].set_ylabel(f"{split} ce per frequency bin")
    axes[0][-1].legend(fontsize=7, title="bin", title_fontsize=7)
    _save_figure(fig, path)

"""The tables of nanolab.compare: report.md (one row per configuration, mean ± sample std over
seeds, n), report.csv and runs.csv."""

from __future__ import annotations

import csv
import io
import math
import os
import statistics

from nanolab import ENDED_AS_PLANNED
from nanolab.critical_batch import CriticalBatch, LrRule
from nanolab.results import (
    METRICS,
    SIZE,
    Row,
    RunResult,
    Target,
    frequency_bins_of,
    natural_key,
)


def human(value: float, _pos: object = None) -> str:
    """A count as people write it, to three digits: 816k, 1.5M, 2G (also a tick formatter)."""
    if math.isnan(value):
        return ""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _sources(sources: list[str]) -> str:
    """The directories a report was made from: listed when few, else counted under their
    common parent (a shell glob over a study's run directories gives dozens)."""
    if len(sources) <= 3:
        return ", ".join(sources)
    parent = os.path.commonpath([os.path.abspath(p) for p in sources])
    return f"{len(sources)} directories under {os.path.relpath(parent)}"


def _fmt(fmt: str, mean: float, std: float) -> str:
    if math.isnan(mean):
        return ""
    return fmt.format(mean) if math.isnan(std) else f"{fmt.format(mean)} ± {fmt.format(std)}"


def mean_std(values: list[float], spec: str = ".3f") -> str:
    """Mean ± sample standard deviation of the values that are numbers (NaN left out), the
    value alone when there is one, "" when there is none: a table cell over seeds."""
    values = [v for v in values if not math.isnan(v)]
    if len(values) < 2:
        return "".join(f"{v:{spec}}" for v in values)
    return f"{statistics.mean(values):{spec}} ± {statistics.stdev(values):{spec}}"


def table_markdown(head: list[str], body: list[list[str]]) -> str:
    """A markdown table of the given header and rows of cells."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def size_columns(rows: list[Row]) -> list[tuple[str, str]]:
    """The size columns that every row knows (runs from before they were recorded have none)."""
    return [
        (k, h) for k, h in SIZE if rows and all(row.stats(k)[2] for row in rows if row.finished)
    ]


def markdown_table(rows: list[Row], keys: list[str]) -> str:
    sizes = size_columns(rows)
    head = [
        *(keys or ["configuration"]),
        "n",
        "seeds",
        *(h for _, h in sizes),
        *(h for _, h, _, _ in METRICS),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.params[k] for k in keys] or ["all runs"]
        cells += [str(len(row.finished)), ",".join(str(r.seed) for r in row.finished)]
        cells += [human(row.stats(k)[0]) for k, _ in sizes]
        cells += [_fmt(fmt, *row.stats(key)[:2]) for key, _, fmt, _ in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report_markdown(
    rows: list[Row],
    keys: list[str],
    runs: list[RunResult],
    sort: str,
    *,
    sources: list[str],
    evaluated_tokens: int = 0,
    target: Target | None = None,
    critical: CriticalBatch | None = None,
) -> str:
    unfinished = [r for r in runs if r.status not in ENDED_AS_PLANNED or not r.values]
    early = [r for r in runs if r.status == "early_stopped"]
    where = (
        "val/ce, its calibrated value, T, val/acc and val/ece are from nanolab.evaluate on the "
        f"whole val split ({evaluated_tokens:,} tokens) at each run's final step "
        "(evaluation_val.json), the rest from its last in-training evaluation"
        if evaluated_tokens
        else "metrics are from each run's last evaluation"
    )
    out = [
        "# Comparison report\n",
        f"Runs: {len(runs)} from {_sources(sources)}; {len(runs) - len(unfinished)} "
        f"finished. One row per configuration, sorted by {sort}. Cells are mean ± "
        f"sample standard deviation over the finished seeds (n); {where}; `best val/ce` "
        "is its lowest in training, tokens/s the median over its log intervals.\n",
        markdown_table(rows, keys),
    ]
    if early:
        out.append(
            "\nStopped early (trainer.early_stop; counted as finished, at their last evaluation): "
            + ", ".join(f"`{r.dir.name}`" for r in early)
            + "\n"
        )
    if unfinished:
        out.append("\n## Runs that did not finish (left out of the statistics)\n")
        out += [
            f"- `{r.dir}` (seed {r.seed}): {r.status}" + (f": {r.error}" if r.error else "")
            for r in unfinished
        ]
        out.append("")
    if target:
        out.append("\n" + target_table(rows, keys, target))
    if target and critical:
        out.append("\n" + critical_batch_section(critical, keys, target))
    for split in ("val", "train"):
        if frequency_bins_of(rows, split):
            out.append("\n" + frequency_section(rows, keys, split))
    out.append("\n## Every run\n")
    head = ["run", "status", "seed", *(h for _, h, _, _ in METRICS)]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        cells = [r.dir.name, r.status, str(r.seed)]
        cells += [fmt.format(r.values[k]) if k in r.values else "" for k, _, fmt, _ in METRICS]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def frequency_section(rows: list[Row], keys: list[str], split: str = "val") -> str:
    """The final cross-entropy and accuracy per token-frequency bin of each configuration
    (token_freq.bins, or nanolab.evaluate's bins with --evaluated), and what each bin holds."""
    bins = frequency_bins_of(rows, split)
    prefix = f"{split}_freq"
    # what each bin holds is a function of the data alone: read it from any run that has it
    described = next(
        run for row in rows for run in row.finished if f"{prefix}/{bins[0]}/ce" in run.values
    )
    out = [
        f"## By token frequency ({split})\n",
        "Classes binned by their count in the training split, b0 the commonest; the rarest bin "
        "also holds the classes never seen in training. A bin's ce and acc are over the "
        f"{split} targets in it; the bins' values weighted by their shares are the overall "
        "ones.\n",
        "| bin | classes | smallest training count | share of targets |",
        "|---|---|---|---|",
    ]
    for name in bins:
        get = described.values.get
        out.append(
            f"| {name} | {get(f'{prefix}/{name}/classes', math.nan):.0f} "
            f"| {get(f'{prefix}/{name}/min_count', math.nan):.0f} "
            f"| {get(f'{prefix}/{name}/share', math.nan):.4f} |"
        )
    titles = {
        "ce": f"{split} ce per bin, final",
        "acc": f"{split} accuracy per bin, final",
        "ce_drop": f"{split} ce per bin, fall since the first evaluation (step 0 in training)",
    }
    for metric, title in titles.items():
        if not any(row.stats(f"{prefix}/{b}/{metric}")[2] for row in rows for b in bins):
            continue  # --evaluated: the whole split was scored at the end only
        head = [*(keys or ["configuration"]), "n", *bins]
        out += ["", f"{title}:\n", "| " + " | ".join(head) + " |"]
        out.append("|" + "---|" * len(head))
        for row in rows:
            cells = [row.params[k] for k in keys] or ["all runs"]
            cells.append(str(len(row.finished)))
            cells += [_fmt("{:.3f}", *row.stats(f"{prefix}/{b}/{metric}")[:2]) for b in bins]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


# A run's steps and tokens to compare --target, when it reaches it.
TARGET_VALUES = [("target/steps", "steps", "{:.0f}"), ("target/tokens", "tokens", "{:.3g}")]
B_SIMPLE_VALUES = [
    ("b_simple/first_eval", "B_simple at first eval", "{:.3g}"),
    ("b_simple/target", "B_simple at target", "{:.3g}"),
]


def target_table(rows: list[Row], keys: list[str], target: Target) -> str:
    """Steps and tokens to the target per configuration: mean ± sample std over the finished
    seeds that reach it, and how many of them do."""
    lines = [
        f"## Steps and tokens to {target}\n",
        "The first evaluation that reaches it, interpolated linearly from the one before; "
        "mean ± sample standard deviation over the seeds that reach it.\n",
        "| " + " | ".join([*(keys or ["configuration"]), "reached", "steps", "tokens"]) + " |",
        "|" + "---|" * (len(keys or [0]) + 3),
    ]
    for row in rows:
        reached = sum("target/steps" in r.values for r in row.finished)
        cells = [row.params[k] for k in keys] or ["all runs"]
        cells.append(f"{reached} of {len(row.finished)}")
        cells += [
            _fmt(fmt, *row.stats(key)[:2]) if reached else "not reached"
            for key, _, fmt in TARGET_VALUES
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def critical_batch_section(critical: CriticalBatch, keys: list[str], target: Target) -> str:
    """The critical batch size fitted to each batch size's fewest steps to the target."""
    fitted, interval = critical.fit, critical.interval
    spread = (
        f"95% interval {interval[0]:.3g} to {interval[1]:.3g}"
        if interval
        else "one seed per batch size: no interval"
    )
    lines = [
        f"## Critical batch size (to {target})\n",
        "Each batch size (tokens per step) at its configuration with the fewest steps to the "
        "target, and S = S_min·(1 + B_crit/B) (McCandlish et al. 2018, eq. 2.11) fitted by "
        "least squares on log S; the interval resamples each batch size's seeds (1000 times).\n",
        f"B_crit = {fitted.b_crit:.3g} tokens per step ({spread}); S_min = "
        f"{fitted.s_min:.3g} steps; E_min = {fitted.e_min:.3g} tokens.\n",
        "| tokens/step | " + " | ".join(keys or ["configuration"]) + " | steps | tokens | fit |",
        "|" + "---|" * (len(keys or [0]) + 4),
    ]
    noise = [
        v for v in B_SIMPLE_VALUES if any(row.stats(v[0])[2] for row in critical.best.values())
    ]
    lines[-2] += "".join(f" {head} |" for _, head, _ in noise)
    lines[-1] += "---|" * len(noise)
    for batch, row in critical.best.items():
        cells = [f"{batch:g}", *([row.params[k] for k in keys] or ["all runs"])]
        cells += [_fmt(fmt, *row.stats(key)[:2]) for key, _, fmt in TARGET_VALUES]
        cells.append(f"{fitted.steps(batch):.0f}")
        cells += [_fmt(fmt, *row.stats(key)[:2]) for key, _, fmt in noise]
        lines.append("| " + " | ".join(cells) + " |")
    if noise:
        lines.append(
            "\nB_simple = tr(Σ)/|G|² in tokens (McCandlish et al. 2018), the gradient "
            "noise scale measured in training (noise_scale.enabled), at the first evaluation "
            "after step 0 and where the target is reached; the paper finds it of the same order "
            "as B_crit. An average over few steps (a large batch "
            "reaches the target in few) is noisy, and can be negative."
        )
    if critical.lr:
        lines.append("\n" + lr_rule_section(critical.lr))
    return "\n".join(lines) + "\n"


def lr_rule_section(rule: LrRule) -> str:
    """The best learning rate against batch size and the exponent of lr ∝ B^k."""
    lines = [
        "### Best learning rate against batch size\n",
        f"lr ∝ B^k with k = {rule.exponent:.2f}, fitted by least squares on log-log axes over "
        f"{len(rule.best)} batch sizes (linear scaling rule: k = 1; square-root rule: k = 0.5). "
        "A best lr is known only to within the spacing of the values tried around it.\n",
        "| tokens/step | lrs tried | best lr |",
        "|---|---|---|",
    ]
    for batch, lr in rule.best.items():
        lines.append(f"| {batch:g} | {' '.join(f'{v:g}' for v in rule.tried[batch])} | {lr:g} |")
    if rule.at_an_end:
        lines.append(
            "\nAt an end of the values tried (the optimum may lie beyond; widen the grid): "
            + ", ".join(f"{b:g} tokens/step" for b in rule.at_an_end)
            + "."
        )
    return "\n".join(lines)


def best_value_section(rows: list[Row], keys: list[str], key: str, metric: str) -> str:
    """Where the best `metric` lies along a swept numeric `key`, for each combination of the
    other keys (the best lr per width, say), and whether it is interior to the values tried:
    an optimum at an end of the grid is only a bound."""
    higher_better = next(h for k, _, _, h in METRICS if k == metric)
    others = [k for k in keys if k != key]
    lines: dict[str, list[tuple[float, float, int]]] = {}
    for row in rows:
        mean, _, n = row.stats(metric)
        lines.setdefault(row.label(others), []).append((float(row.params[key]), mean, n))
    out = [
        f"### Best {key} by {metric}\n",
        f"| {', '.join(others) or 'runs'} | {key} tried | best {key} | {metric} there | where |",
        "|---|---|---|---|---|",
    ]
    for label, points in sorted(lines.items(), key=lambda item: natural_key(item[0])):
        points.sort()
        scored = [(v, m) for v, m, n in points if n and math.isfinite(m)]
        if not scored:
            continue
        best = (max if higher_better else min)(scored, key=lambda p: p[1])
        index = [v for v, _ in scored].index(best[0])
        where = (
            "lowest tried (a bound)"
            if best[0] == points[0][0]
            else "highest tried (a bound)"
            if best[0] == points[-1][0]
            else "interior"
        )
        failed = [v for v, m, n in points if not n or not math.isfinite(m)]
        tried = " ".join(f"{v:g}" for v, _, _ in points)
        note = f" ({', '.join(f'{v:g}' for v in failed)} did not finish)" if failed else ""
        out.append(
            f"| {label} | {tried}{note} | {best[0]:g} (#{index + 1}) | {best[1]:.4f} | {where} |"
        )
    return "\n".join(out)


def rows_csv(rows: list[Row], keys: list[str], target: Target | None = None) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    sizes = size_columns(rows)
    targets = [k for k, *_ in TARGET_VALUES] if target else []

    def mean_std(row: Row, metrics: list[str]) -> list[str]:
        pairs = (row.stats(k)[:2] for k in metrics)
        return ["" if math.isnan(x) else repr(x) for pair in pairs for x in pair]

    writer.writerow(
        [
            *keys,
            "n",
            "seeds",
            *(k for k, _ in sizes),
            *(f"{k}_{s}" for k, *_ in METRICS for s in ("mean", "std")),
            *(["target_reached"] if target else []),
            *(f"{k}_{s}" for k in targets for s in ("mean", "std")),
        ]
    )
    for row in rows:
        writer.writerow(
            [
                *(row.params[k] for k in keys),
                len(row.finished),
                " ".join(str(r.seed) for r in row.finished),
                *(repr(row.stats(k)[0]) for k, _ in sizes),
                *mean_std(row, [k for k, *_ in METRICS]),
                *([sum("target/steps" in r.values for r in row.finished)] if target else []),
                *mean_std(row, targets),
            ]
        )
    return buffer.getvalue()


def runs_csv(runs: list[RunResult], keys: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run_dir", "status", "seed", *keys, *(k for k, *_ in METRICS), "error"])
    for r in runs:
        writer.writerow(
            [
                str(r.dir),
                r.status,
                r.seed,
                *(r.params[k] for k in keys),
                *(r.values.get(k, "") for k, *_ in METRICS),
                r.error,
            ]
        )
    return buffer.getvalue()

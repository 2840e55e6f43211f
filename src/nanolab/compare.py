"""Compare runs: one row per configuration, seeds aggregated, from local files only (no W&B).

    python -m nanolab.compare multirun/2026-11-23_21-04-23
    python -m nanolab.compare outputs/2026-11-23/10-00-00 outputs/2026-11-24/09-12-40 --out reports/lr
    python -m nanolab.compare multirun/2026-11-23_21-04-23 --sort val/acc

Reads each run's metrics.jsonl, summary.json and .hydra/ files, then writes into the sweep
directory (or --out):
- report.md and report.csv: one row per configuration, mean, sample standard deviation (n-1)
  and n over seeds; the keys that vary between configurations are columns;
- runs.csv: one row per run;
- curves.png: val/ce, calibrated val/ce, val/acc and train/loss against tokens seen, the mean
  over seeds with a band of one standard deviation, val/ce twice more zoomed on the better
  configurations (a run far behind does not flatten the others' gaps);
- final.png: each configuration's final calibrated val/ce and val/acc, mean ± std, every seed;
- <metric>_vs_<key>.png for each swept numeric key (the learning-rate U-curve), one line per
  value of the other keys;
- metrics_vs_params.png, when the sweep varies model.* keys: final val and train_eval
  cross-entropy and accuracy against parameter count (the report gains params and FLOPs/token);
- sharpness.png, when runs measured it (sharpness.every): each run's sharpness against step
  with its stability threshold dashed.
With --evaluated, each finished run's val metrics are those nanolab.evaluate wrote into its
evaluation_val.json (every token of the val split, scored by the run's final checkpoint)
instead of its last in-training evaluation (a few batches): the axis for comparisons at a
large vocabulary, where a few batches leave the seeds' noise larger than the configurations'
gaps. The curves stay the in-training evaluations.
With --wandb-workspace it also saves the sweep's W&B workspace (nanolab/workspace.py), or
writes its definition to wandb_workspace.json when W&B is offline. It prints the table too.
A configuration is a run's overrides without its seed and without
keys that do not change what a run computes (resume, allow_changes, fresh_optimizer, device, compile, logger.*, hydra.*).
Only finished (or early-stopped) runs enter the statistics; the others are listed with their
status and error.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from nanolab import ENDED_AS_PLANNED, ConfigError, config_as_data, exit_on_config_error
from nanolab.atomic import atomic_path
from nanolab.tracking import wandb_group
from nanolab.workspace import Sweep, config_key, publish

log = logging.getLogger("nanolab.compare")

# (key, heading, format, higher is better). Keys are run values computed by `run_values`.
METRICS = [
    ("val/ce", "val/ce", "{:.4f}", False),
    ("best/val/ce", "best val/ce", "{:.4f}", False),
    ("val/ce_calibrated", "val/ce calibrated", "{:.4f}", False),
    ("val/temperature", "T", "{:.3f}", False),
    ("val/acc", "val/acc", "{:.4f}", True),
    ("val/ece", "val/ece", "{:.4f}", False),
    ("perf/tokens_per_s", "tokens/s", "{:.0f}", True),
    ("wall_time_s", "wall time (s)", "{:.0f}", False),
]
# A run's size, from its summary.json: the same for every seed of a configuration.
SIZE = [("params", "params"), ("flops_per_token", "FLOPs/token")]
# The last evaluation's training-set metrics, for plots against model size (over- versus
# under-fitting).
TRAIN_EVAL = ("train_eval/ce", "train_eval/acc")
# The metrics --evaluated takes from a run's evaluation_val.json, as its val/<name>.
EVALUATED = ("ce", "ce_calibrated", "temperature", "acc", "ece")
# and their sub-keys
IDENTITY_FREE_KEYS = (
    "resume",
    "allow_changes",
    "fresh_optimizer",
    "device",
    "compile",
    "logger",
    "hydra",
)


@dataclass
class RunResult:
    """One training run as its directory records it."""

    dir: Path
    status: str
    error: str
    seed: Any
    params: dict[str, str]  # override key -> value, seed and identity-free keys left out
    records: list[dict[str, Any]]
    values: dict[str, float] = field(default_factory=dict)


def is_run_dir(path: Path) -> bool:
    return (
        (path / "metrics.jsonl").is_file()
        or (path / "summary.json").is_file()
        or (path / ".hydra").is_dir()
    )


def find_run_dirs(paths: list[str]) -> list[Path]:
    """Run directories from the arguments: each is a run directory or holds run directories
    (a multirun sweep), in job order."""
    found = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise ConfigError(
                f"{path} is not a directory; give a multirun directory or run directories"
            )
        if is_run_dir(path):
            found.append(path)
            continue
        jobs = [d for d in path.iterdir() if d.is_dir() and is_run_dir(d)]
        if not jobs:
            raise ConfigError(
                f"{path} holds no runs: no metrics.jsonl, summary.json or .hydra/ in it or its subdirectories"
            )
        found += sorted(jobs, key=_job_order)
    return found


def _job_order(path: Path) -> tuple[int, str]:
    number = path.name.split("_", 1)[0]
    return (int(number) if number.isdigit() else math.inf, path.name)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _is_identity_free(key: str) -> bool:
    return key.split(".", 1)[0] in IDENTITY_FREE_KEYS


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_record(record: Any) -> bool:
    """A metrics.jsonl record as nanolab writes it: an object with an integer step, its tokens
    and time_s, and numbers for values but for a run's closing `status` marker."""
    return (
        isinstance(record, dict)
        and isinstance(record.get("step"), int)
        and not isinstance(record["step"], bool)
        and _numeric(record.get("tokens"))
        and _numeric(record.get("time_s"))
        and all(_numeric(v) or (k == "status" and isinstance(v, str)) for k, v in record.items())
    )


def read_records(path: Path) -> list[dict[str, Any]]:
    """A metrics.jsonl, read defensively: a torn line (a process killed mid-write) or one that
    is not a record is left out and a step logged twice of the same kind (two runs in one
    directory) is kept once, each with a warning naming the file and line."""
    records, seen = [], {}
    if not path.is_file():
        return records
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not _is_record(record):
            log.warning(
                "%s line %d is torn or not a record (a process killed mid-write?); left out",
                path,
                number,
            )
            continue
        key = (
            record["step"],
            tuple(sorted(k for k in record if k not in ("step", "tokens", "time_s"))),
        )
        if key in seen:
            log.warning(
                "%s line %d logs step %d again (first at line %d): two runs wrote here? the first is kept",
                path,
                number,
                key[0],
                seen[key],
            )
            continue
        seen[key] = number
        records.append(record)
    return records


def read_run(path: Path) -> RunResult:
    """A run from its directory; a run without summary.json was killed or is still running."""
    records = read_records(path / "metrics.jsonl")
    try:
        summary = json.loads((path / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {"status": "incomplete", "error": "no summary.json: killed, or still running"}
    if not isinstance(summary, dict) or not isinstance(summary.get("status", ""), str):
        log.warning(
            "%s is not a run's summary (a JSON object with a status); the run is left out",
            path / "summary.json",
        )
        summary = {"status": "unreadable", "error": "summary.json is not a run's summary"}
    overrides = _read_yaml(path / ".hydra" / "overrides.yaml") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        log.warning("%s is not a list of overrides; ignored", path / ".hydra" / "overrides.yaml")
        overrides = []
    params = {}
    for override in overrides:
        key, _, value = override.partition("=")
        params[key.lstrip("+~")] = value
    config = _read_yaml(path / ".hydra" / "config.yaml")
    config = config if isinstance(config, dict) else {}
    seed = config.get("seed", params.get("seed"))
    params = {k: v for k, v in params.items() if k != "seed" and not _is_identity_free(k)}
    return RunResult(
        path,
        summary.get("status", "unknown"),
        summary.get("error", ""),
        seed,
        params,
        records,
        run_values(records, summary, path),
    )


def run_values(
    records: list[dict[str, Any]], summary: dict[str, Any], where: Path | None = None
) -> dict[str, float]:
    """The report's numbers for one run: the last evaluation, the best val/ce, the median
    throughput and the wall time."""
    evals = [r for r in records if "val/ce" in r]
    if not evals:
        return {}
    values = {k: evals[-1][k] for k in [*(k for k, *_ in METRICS), *TRAIN_EVAL] if k in evals[-1]}
    if summary.get("status") in ENDED_AS_PLANNED:  # its summary holds the final evaluation for sure
        final = {k: summary[f"final/{k}"] for k in values if _numeric(summary.get(f"final/{k}"))}
        if any(final[k] != values[k] for k in final):
            log.warning(
                "%s: metrics.jsonl's last evaluation (step %d) is not summary.json's final one: the summary's is reported",
                where,
                evals[-1]["step"],
            )
        values |= final
    values["best/val/ce"] = min(r["val/ce"] for r in evals)
    speeds = [r["perf/tokens_per_s"] for r in records if "perf/tokens_per_s" in r]
    if speeds:
        values["perf/tokens_per_s"] = statistics.median(speeds)
    values["wall_time_s"] = (
        summary["wall_time_s"]
        if _numeric(summary.get("wall_time_s"))
        else max(r["time_s"] for r in records)
    )
    values |= {k: float(summary[k]) for k, _ in SIZE if _numeric(summary.get(k))}
    return values


def use_evaluations(runs: list[RunResult]) -> int:
    """Give each finished run the val metrics of its evaluation_val.json, which must score its
    final step; returns the tokens they were measured on (the same split for every run)."""
    tokens, missing = set(), []
    for run in (r for r in runs if r.status in ENDED_AS_PLANNED and r.values):
        final = max(r["step"] for r in run.records)
        try:
            evaluation = json.loads((run.dir / "evaluation_val.json").read_text())
        except (OSError, ValueError):
            evaluation = {}
        if evaluation.get("step") != final:
            missing.append(f"{run.dir}/last.pt")
            continue
        run.values |= {f"val/{k}": evaluation[k] for k in EVALUATED if k in evaluation}
        tokens.add(evaluation["tokens"])
    if missing:
        raise ConfigError(
            f"--evaluated: {len(missing)} finished run(s) have no evaluation_val.json of their final step; write them with "
            f"`python -m nanolab.evaluate checkpoint=<run>/last.pt`, for: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
        )
    if len(tokens) > 1:
        raise ConfigError(
            f"--evaluated: the runs' evaluation_val.json files score different numbers of tokens ({sorted(tokens)}): evaluate them on the same data"
        )
    return tokens.pop() if tokens else 0


def fill_missing_params(runs: list[RunResult]) -> list[str]:
    """Give every run a value for every key some run overrides (its config's value or group
    choice when it did not override it); returns the keys whose values differ across runs."""
    keys = list(dict.fromkeys(k for run in runs for k in run.params))
    for run in runs:
        for key in keys:
            if key not in run.params:
                run.params[key] = _configured_value(run.dir, key)
    return [k for k in keys if len({run.params[k] for run in runs}) > 1]


def _configured_value(run_dir: Path, key: str) -> str:
    hydra_cfg = _read_yaml(run_dir / ".hydra" / "hydra.yaml") or {}
    choices = hydra_cfg.get("hydra", {}).get("runtime", {}).get("choices", {})
    if key in choices:
        return str(choices[key])
    node: Any = _read_yaml(run_dir / ".hydra" / "config.yaml") or {}
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    # Hydra saves config.yaml unresolved: a preset's ${tuned_lr.${loss.name}}
    if isinstance(node, str) and "${" in node:
        # references to other keys resolve; resolvers (${oc.env:...}) in a file from elsewhere stay
        # text
        try:
            node = OmegaConf.select(
                OmegaConf.create(
                    config_as_data(_read_yaml(run_dir / ".hydra" / "config.yaml"), references=True)
                ),
                key,
            )
        # an interpolation that cannot be resolved from the file alone: keep it as written
        except Exception:
            pass
    return "?" if node is None else str(node)


@dataclass
class Row:
    """One configuration: its swept values and statistics over its finished runs."""

    params: dict[str, str]
    runs: list[RunResult]

    @property
    def finished(self) -> list[RunResult]:
        return [r for r in self.runs if r.status in ENDED_AS_PLANNED and r.values]

    def stats(self, key: str) -> tuple[float, float, int]:
        """(mean, sample std, n) of a value over finished runs; std is nan when n < 2."""
        xs = [r.values[key] for r in self.finished if key in r.values]
        if not xs:
            return math.nan, math.nan, 0
        return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else math.nan, len(xs)

    def label(self, keys: list[str]) -> str:
        return ",".join(f"{k}={self.params[k]}" for k in keys) or "all runs"


def group_rows(runs: list[RunResult], keys: list[str], sort: str) -> list[Row]:
    rows: dict[tuple, Row] = {}
    for run in runs:
        ident = tuple(run.params[k] for k in keys)
        rows.setdefault(ident, Row({k: run.params[k] for k in keys}, [])).runs.append(run)
    higher_better = next(h for k, _, _, h in METRICS if k == sort)

    def order(row: Row) -> tuple[bool, float]:
        mean = row.stats(sort)[0]
        return math.isnan(mean), -mean if higher_better else mean

    return sorted(rows.values(), key=order)


def _human(value: float, _pos: object = None) -> str:
    """A count as people write it, to three digits: 816k, 1.5M, 2G (also a tick formatter)."""
    if math.isnan(value):
        return ""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _log_axis(axis: Any, fmt: Callable[[float, Any], str] = lambda v, _pos=None: f"{v:g}") -> None:
    """Log-scale `axis` with plain tick labels (1k, 0.003; also at 2 and 5 between powers of
    ten): matplotlib's own are mathtext, which compare turns off as labels may hold a '$'."""
    from matplotlib.ticker import FuncFormatter

    (axis.axes.set_xscale if axis.axis_name == "x" else axis.axes.set_yscale)("log")
    axis.set_major_formatter(FuncFormatter(fmt))
    axis.set_minor_formatter(
        FuncFormatter(lambda v, pos: fmt(v, pos) if f"{v:.1g}"[0] in "25" else "")
    )


def _fmt(fmt: str, mean: float, std: float) -> str:
    if math.isnan(mean):
        return ""
    return fmt.format(mean) if math.isnan(std) else f"{fmt.format(mean)} ± {fmt.format(std)}"


def _sizes(rows: list[Row]) -> list[tuple[str, str]]:
    """The size columns that every row knows (runs from before they were recorded have none)."""
    return [
        (k, h) for k, h in SIZE if rows and all(row.stats(k)[2] for row in rows if row.finished)
    ]


def markdown_table(rows: list[Row], keys: list[str]) -> str:
    sizes = _sizes(rows)
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
        cells += [_human(row.stats(k)[0]) for k, _ in sizes]
        cells += [_fmt(fmt, *row.stats(key)[:2]) for key, _, fmt, _ in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report_markdown(
    rows: list[Row],
    keys: list[str],
    runs: list[RunResult],
    sort: str,
    sources: list[str],
    evaluated_tokens: int = 0,
) -> str:
    unfinished = [r for r in runs if r.status not in ENDED_AS_PLANNED or not r.values]
    early = [r for r in runs if r.status == "early_stopped"]
    where = (
        f"val/ce, its calibrated value, T, val/acc and val/ece are from nanolab.evaluate on the whole val split ({evaluated_tokens:,} tokens) "
        "at each run's final step (evaluation_val.json), the rest from its last in-training evaluation"
        if evaluated_tokens
        else "metrics are from each run's last evaluation"
    )
    out = [
        "# Comparison report\n",
        f"Runs: {len(runs)} from {', '.join(sources)}; {len(runs) - len(unfinished)} finished. "
        f"One row per configuration, sorted by {sort}. Cells are mean ± sample standard deviation "
        f"over the finished seeds (n); {where}; `best val/ce` is "
        "its lowest in training, tokens/s the median over its log intervals.\n",
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
    out.append("\n## Every run\n")
    head = ["run", "status", "seed", *(h for _, h, _, _ in METRICS)]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        cells = [r.dir.name, r.status, str(r.seed)]
        cells += [fmt.format(r.values[k]) if k in r.values else "" for k, _, fmt, _ in METRICS]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def rows_csv(rows: list[Row], keys: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    sizes = _sizes(rows)
    writer.writerow(
        [
            *keys,
            "n",
            "seeds",
            *(k for k, _ in sizes),
            *(f"{k}_{s}" for k, *_ in METRICS for s in ("mean", "std")),
        ]
    )
    for row in rows:
        stats = [row.stats(k)[:2] for k, *_ in METRICS]
        writer.writerow(
            [
                *(row.params[k] for k in keys),
                len(row.finished),
                " ".join(str(r.seed) for r in row.finished),
            ]
            + [repr(row.stats(k)[0]) for k, _ in sizes]
            + ["" if math.isnan(x) else repr(x) for pair in stats for x in pair]
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
        ax.xaxis.set_major_formatter(FuncFormatter(_human))
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
    rows: list[Row], keys: list[str], key: str, metric: str, path: Path
) -> None:
    """`metric` against the numeric values of a swept `key`, one line per value of the others."""
    import matplotlib.pyplot as plt

    others = [k for k in keys if k != key]
    lines: dict[str, list[tuple[float, float, float]]] = {}
    for row in rows:
        mean, std, n = row.stats(metric)
        if n:
            lines.setdefault(row.label(others), []).append(
                (float(row.params[key]), mean, 0.0 if math.isnan(std) else std)
            )
    fig, ax = plt.subplots(figsize=(6, 4.2), constrained_layout=True)
    # no two lines alike
    palette = plt.cm.tab10.colors if len(lines) <= 10 else plt.cm.tab20.colors * 5
    for (label, points), color in zip(
        sorted(lines.items(), key=lambda item: _natural(item[0])), palette
    ):
        x, y, err = zip(*sorted(points))
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label, color=color)
    xs = [float(row.params[key]) for row in rows]
    if min(xs) > 0 and max(xs) / min(xs) >= 10:
        _log_axis(ax.xaxis)
    ax.set_xlabel(key)
    ax.set_ylabel(f"final {metric} ({UNITS.get(metric, '')}), mean ± std")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
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
                    label=f"{label} (interpolation: {_human(point)} params)",
                )
    for ax in axes:
        _log_axis(ax.xaxis, _human)
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


def _natural(label: str) -> list[Any]:
    """A sort key reading the numbers in a label as numbers: k=30 before k=100."""
    return [
        float(part) if _is_number(part) else part
        for part in re.split(r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)", label)
    ]


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def wandb_sweep(runs: list[RunResult], keys: list[str]) -> Sweep:
    """Where the runs are on W&B (project, entity, group, as nanolab.train named them) and the
    config keys their configurations differ by."""
    places, choices = set(), set()
    for run in runs:
        config = _read_yaml(run.dir / ".hydra" / "config.yaml") or {}
        hydra = (_read_yaml(run.dir / ".hydra" / "hydra.yaml") or {}).get("hydra", {})
        logger = config.get("logger") or {}
        runtime_choices = hydra.get("runtime", {}).get("choices", {})
        choices |= set(runtime_choices)
        sweep_dir = run.dir.parent if hydra.get("mode") == "MULTIRUN" else None
        group = wandb_group(logger.get("group"), runtime_choices.get("experiment"), sweep_dir)
        places.add((logger.get("entity"), logger.get("project", "nanolab"), group))
    if len(places) != 1 or next(iter(places))[2] is None:
        raise ConfigError(
            f"--wandb-workspace needs the runs of one W&B group (one sweep); these are in {sorted(map(str, places))}"
        )
    entity, project, group = places.pop()
    return Sweep(entity, project, group, [config_key(k, choices) for k in keys])


def offline_run_folders(run_dirs: list[Path]) -> str:
    """The offline W&B folders of the runs, as `wandb sync` takes them: each run keeps its own
    under <run dir>/wandb/ (one pattern for the runs of one sweep)."""
    parents = {d.parent for d in run_dirs}
    if len(parents) == 1 and len(run_dirs) > 1:
        return f"{parents.pop()}/*/wandb/offline-run-*"
    return " ".join(f"{d}/wandb/offline-run-*" for d in run_dirs)


def compare(
    paths: list[str],
    out: Path | None = None,
    sort: str = "val/ce_calibrated",
    wandb_workspace: bool = False,
    evaluated: bool = False,
) -> Path:
    """Write the report of the runs under `paths` into `out` (default: the one directory given,
    or the common parent of several) and print its table; returns the report's path. With
    `evaluated`, the val metrics are those of each run's evaluation_val.json."""
    if sort not in [k for k, *_ in METRICS]:
        raise ConfigError(f"--sort {sort} is not one of {', '.join(k for k, *_ in METRICS)}")
    runs = [read_run(d) for d in find_run_dirs(paths)]
    evaluated_tokens = use_evaluations(runs) if evaluated else 0
    keys = fill_missing_params(runs)
    rows = group_rows(runs, keys, sort)
    if out is None:
        out = (
            Path(paths[0])
            if len(paths) == 1
            else Path(os.path.commonpath([Path(p).resolve() for p in paths]))
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_text(
            out / "report.md", report_markdown(rows, keys, runs, sort, paths, evaluated_tokens)
        )
        _write_text(out / "report.csv", rows_csv(rows, keys))
        _write_text(out / "runs.csv", runs_csv(runs, keys))
        import matplotlib

        matplotlib.use("Agg")  # files only; no display needed
        # labels are override values, which may hold a '$'
        matplotlib.rcParams["text.parse_math"] = False
        plot_curves(rows, keys, out / "curves.png")
        plot_final_values(rows, keys, out / "final.png")
        plot_sharpness(runs, keys, out / "sharpness.png")
        if any(k.startswith("model.") for k in keys) and _sizes(rows):
            plot_against_size(rows, keys, out / "metrics_vs_params.png")
        for key in keys:
            if len(rows) > 1 and all(_is_number(row.params[key]) for row in rows):
                plot_metric_vs_value(
                    rows, keys, key, sort, out / f"{sort.replace('/', '_')}_vs_{key}.png"
                )
    except OSError as e:
        raise ConfigError(
            f"cannot write the report to {out} ({e.strerror}); choose another --out"
        ) from e
    print(markdown_table(rows, keys))
    unfinished = [r for r in runs if r.status not in ENDED_AS_PLANNED or not r.values]
    for r in unfinished:
        print(f"not finished, left out: {r.dir} ({r.status}{': ' + r.error if r.error else ''})")
    print(f"report: {out / 'report.md'} (and report.csv, runs.csv, curves.png, final.png)")
    if wandb_workspace:
        command = f"python -m nanolab.compare {' '.join(paths)} --wandb-workspace"
        print(
            publish(
                wandb_sweep(runs, keys),
                out,
                command,
                offline_run_folders([run.dir for run in runs]),
            )
        )
    return out / "report.md"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nanolab.compare", description=__doc__.split("\n")[0]
    )
    parser.add_argument("paths", nargs="+", help="a multirun directory, or run directories")
    parser.add_argument(
        "--out",
        type=Path,
        help="where to write the report (default: the directory given, or the common parent of several)",
    )
    parser.add_argument(
        "--sort",
        default="val/ce_calibrated",
        help="the metric rows are sorted by, and plotted against swept numbers (default: %(default)s)",
    )
    parser.add_argument(
        "--evaluated",
        action="store_true",
        help="val metrics from each run's evaluation_val.json (python -m nanolab.evaluate checkpoint=<run>/last.pt: the whole val split) instead of its last in-training evaluation",
    )
    parser.add_argument(
        "--wandb-workspace",
        action="store_true",
        help="also save a W&B workspace for the sweep's group (offline: write its definition to wandb_workspace.json)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with exit_on_config_error(log):
        compare(args.paths, args.out, args.sort, args.wandb_workspace, args.evaluated)


if __name__ == "__main__":
    main()

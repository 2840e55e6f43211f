"""Reading runs back from their local files (metrics.jsonl, summary.json, .hydra/,
evaluation_val.json) and grouping them into configurations, seeds aggregated: what nanolab.compare
reports."""

from __future__ import annotations

import json
import logging
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from nanolab import ENDED_AS_PLANNED, ConfigError, config_as_data
from nanolab.config import changes_nothing
from nanolab.tracking import HIGHER_IS_BETTER

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

# Metrics by token frequency (token_freq.bins): <split>_freq/<bin>/<metric>.
FREQ_PREFIXES = ("val_freq/", "train_freq/")


def is_frequency_key(key: str) -> bool:
    return key.startswith(FREQ_PREFIXES)


def frequency_bins_of(rows: list[Row], split: str = "val") -> list[str]:
    """The frequency bins the finished runs of `rows` report for `split`, in order."""
    prefix = f"{split}_freq/"
    return sorted(
        {
            k.split("/")[1]
            for row in rows
            for run in row.finished
            for k in run.values
            if k.startswith(prefix)
        }
    )


@dataclass(kw_only=True)
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
                f"{path} holds no runs: no metrics.jsonl, "
                "summary.json or .hydra/ in it or its subdirectories"
            )
        found += sorted(jobs, key=_job_order)
    return found


def _job_order(path: Path) -> tuple[int, str]:
    number = path.name.split("_", 1)[0]
    return (int(number) if number.isdigit() else math.inf, path.name)


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


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
                "%s line %d logs step %d again (first at line "
                "%d): two runs wrote here? the first is kept",
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
    overrides = read_yaml(path / ".hydra" / "overrides.yaml") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        log.warning("%s is not a list of overrides; ignored", path / ".hydra" / "overrides.yaml")
        overrides = []
    params = {}
    for override in overrides:
        key, _, value = override.partition("=")
        params[key.lstrip("+~")] = value
    config = read_yaml(path / ".hydra" / "config.yaml")
    config = config if isinstance(config, dict) else {}
    seed = config.get("seed", params.get("seed"))
    params = {k: v for k, v in params.items() if k != "seed" and not changes_nothing(k)}
    return RunResult(
        dir=path,
        status=summary.get("status", "unknown"),
        error=summary.get("error", ""),
        seed=seed,
        params=params,
        records=records,
        values=run_values(records, summary, path),
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
    values |= {k: v for k, v in evals[-1].items() if is_frequency_key(k) and _numeric(v)}
    # how far each frequency bin's ce fell since the first evaluation (Kunstner et al.'s
    # question: does an optimizer make progress on the rare classes?)
    values |= {
        f"{k}_drop": evals[0][k] - v
        for k, v in evals[-1].items()
        if is_frequency_key(k) and k.endswith("/ce") and _numeric(evals[0].get(k))
    }
    if summary.get("status") in ENDED_AS_PLANNED:  # its summary holds the final evaluation for sure
        final = {k: summary[f"final/{k}"] for k in values if _numeric(summary.get(f"final/{k}"))}
        if any(final[k] != values[k] for k in final):
            log.warning(
                "%s: metrics.jsonl's last evaluation (step %d) is not "
                "summary.json's final one: the summary's is reported",
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


@dataclass(frozen=True)
class Target:
    """A value of a logged metric for runs to reach (compare --target val/ce=1.9): lower is
    better unless the metric is an accuracy."""

    metric: str
    value: float

    @property
    def higher_is_better(self) -> bool:
        return self.metric.rsplit("/", 1)[-1] in HIGHER_IS_BETTER

    def __str__(self) -> str:
        return f"{self.metric} {'>=' if self.higher_is_better else '<='} {self.value:g}"

    def met(self, value: float) -> bool:
        return value >= self.value if self.higher_is_better else value <= self.value


def parse_target(text: str, runs: list[RunResult]) -> Target:
    """--target <metric>=<number>; ConfigError unless it parses and some run logs the metric."""
    metric, _, number = text.partition("=")
    try:
        target = Target(metric.strip(), float(number))
    except ValueError:
        raise ConfigError(
            f"--target {text}: give <metric>=<number>, e.g. --target val/ce=1.9"
        ) from None
    logged = {k for run in runs for r in run.records for k in r if "/" in k}
    if target.metric not in logged:
        evaluated = sorted(k for k in logged if k.startswith(("val/", "train_eval/")))
        raise ConfigError(
            f"--target {text}: no run logs {target.metric}; they log {', '.join(evaluated)}"
        )
    return target


def reach(records: list[dict[str, Any]], target: Target) -> tuple[float, float] | None:
    """The step and the token count at which a run's logged metric first reaches the target,
    interpolated linearly between the evaluation before and the one that reaches it (the
    first evaluation's own when that one already does); None when no evaluation reaches it."""
    before = None
    for r in records:
        value = r.get(target.metric)
        if not _numeric(value) or math.isnan(value):
            continue
        if target.met(value):
            if before is None:
                return float(r["step"]), float(r["tokens"])
            f = (target.value - before[target.metric]) / (value - before[target.metric])
            return tuple(before[k] + f * (r[k] - before[k]) for k in ("step", "tokens"))
        before = r
    return None


def add_target(runs: list[RunResult], target: Target) -> int:
    """Put each run's steps and tokens to the target among its values (target/steps,
    target/tokens) when it reaches it; returns how many finished runs do."""
    reached = 0
    for run in runs:
        point = reach(run.records, target) if run.values else None
        if point is not None:
            run.values["target/steps"], run.values["target/tokens"] = point
            reached += run.status in ENDED_AS_PLANNED
    return reached


B_SIMPLE = "noise/b_simple"


def add_b_simple(runs: list[RunResult]) -> None:
    """Put each run's gradient noise scale B_simple (noise/b_simple, logged with
    noise_scale.enabled) among its values at two points that compare across batch sizes: its
    first evaluation after step 0 (b_simple/first_eval) and the step at which it reaches the
    target (b_simple/target, after add_target). Each is the last value logged at or before
    that step; runs that do not log it get neither."""
    for run in runs:
        logged = [(r["step"], r[B_SIMPLE]) for r in run.records if _numeric(r.get(B_SIMPLE))]
        if not logged or not run.values:
            continue
        evaluations = [
            r["step"] for r in run.records if r["step"] > 0 and any(k.startswith("val/") for k in r)
        ]
        points = {
            "b_simple/first_eval": evaluations[0] if evaluations else None,
            "b_simple/target": run.values.get("target/steps"),
        }
        for key, step in points.items():
            before = [value for s, value in logged if step is not None and s <= step]
            if before:
                run.values[key] = before[-1]


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
        if any(k.startswith("freq/") for k in evaluation):  # bins of the whole split instead
            run.values = {k: v for k, v in run.values.items() if not k.startswith("val_freq/")}
            run.values |= {
                f"val_{k}": v
                for k, v in evaluation.items()
                if k.startswith("freq/") and _numeric(v)
            }
        tokens.add(evaluation["tokens"])
    if missing:
        raise ConfigError(
            f"--evaluated: {len(missing)} finished run(s) have no evaluation_val.json of their "
            "final step; write them with `python -m nanolab.evaluate checkpoint=<run>/last.pt`, "
            f"for: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
        )
    if len(tokens) > 1:
        raise ConfigError(
            "--evaluated: the runs' evaluation_val.json files score different "
            f"numbers of tokens ({sorted(tokens)}): evaluate them on the same data"
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
    hydra_cfg = read_yaml(run_dir / ".hydra" / "hydra.yaml") or {}
    choices = hydra_cfg.get("hydra", {}).get("runtime", {}).get("choices", {})
    if key in choices:
        return str(choices[key])
    node: Any = read_yaml(run_dir / ".hydra" / "config.yaml") or {}
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    # Hydra saves config.yaml unresolved: a preset's ${tuned_lr.${loss.name}}
    if isinstance(node, str) and "${" in node:
        # references to other keys resolve; resolvers (${oc.env:...}) in a file from elsewhere stay
        # text
        try:
            node = OmegaConf.select(
                OmegaConf.create(
                    config_as_data(read_yaml(run_dir / ".hydra" / "config.yaml"), references=True)
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


def natural_key(label: str) -> list[Any]:
    """A sort key reading the numbers in a label as numbers: k=30 before k=100."""
    return [
        float(part) if is_number(part) else part
        for part in re.split(r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)", label)
    ]


def is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False

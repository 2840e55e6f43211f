"""Compare runs: one row per configuration, seeds aggregated, from local files only (no W&B).

    python -m nanolab.compare multirun/2026-11-23_21-04-23
    python -m nanolab.compare outputs/2026-11-23/10-00-00 outputs/2026-11-24/09-12-40 --out lr
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
- <metric>_vs_<key>.png for each swept numeric key (the learning-rate U-curve; with --panels
  KEY a panel per value of KEY, SP beside μP), and in report.md where the best value of the
  key lies for each combination of the others (interior, or at an end: a bound);
- metrics_vs_params.png, when the sweep varies model.* keys: final val and train_eval
  cross-entropy and accuracy against parameter count (the report gains params and FLOPs/token);
- sharpness.png, when runs measured it (sharpness.every): each run's sharpness against step
  with its stability threshold dashed;
- frequency.png and frequency_curves.png, when runs logged metrics by token frequency
  (token_freq.bins): final ce and accuracy per frequency bin, and each bin's ce against
  tokens per configuration (Kunstner et al. 2024's Fig. 1 layout); report.md gains the
  per-bin tables.
With --evaluated, each finished run's val metrics are those nanolab.evaluate wrote into its
evaluation_val.json (every token of the val split, scored by the run's final checkpoint)
instead of its last in-training evaluation (a few batches), its bins by token frequency
too when the evaluation has them: the axis for comparisons at a
large vocabulary, where a few batches leave the seeds' noise larger than the configurations'
gaps. The curves stay the in-training evaluations.
With --target val/ce=1.9 (any logged metric; accuracies count up, the rest down) report.md gains
each configuration's steps and tokens to reach it: the first evaluation that does, interpolated
from the one before, mean ± std over the seeds that reach it ("not reached" otherwise).
With --wandb-workspace it also saves the sweep's W&B workspace (nanolab/workspace.py), or
writes its definition to wandb_workspace.json when W&B is offline. It prints the table too.
A configuration is a run's overrides without its seed and without
keys that do not change what a run computes (resume, allow_changes, fresh_optimizer, device,
compile, logger.*, hydra.*).
Only finished (or early-stopped) runs enter the statistics; the others are listed with their
status and error.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from nanolab import ENDED_AS_PLANNED, ConfigError, exit_on_config_error
from nanolab.atomic import atomic_path
from nanolab.critical_batch import critical_batch
from nanolab.launch import wandb_group
from nanolab.plots import (
    plot_against_size,
    plot_b_simple,
    plot_curves,
    plot_final_values,
    plot_frequency,
    plot_frequency_curves,
    plot_lr_vs_batch,
    plot_metric_vs_value,
    plot_sharpness,
    plot_steps_vs_tokens,
)
from nanolab.report import (
    best_value_section,
    markdown_table,
    report_markdown,
    rows_csv,
    runs_csv,
    size_columns,
    target_table,
)
from nanolab.results import (
    METRICS,
    RunResult,
    add_b_simple,
    add_target,
    fill_missing_params,
    find_run_dirs,
    frequency_bins_of,
    group_rows,
    is_frequency_key,
    is_number,
    parse_target,
    read_run,
    read_yaml,
    use_evaluations,
)
from nanolab.workspace import Sweep, config_key, publish

log = logging.getLogger("nanolab.compare")


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def wandb_sweep(runs: list[RunResult], keys: list[str]) -> Sweep:
    """Where the runs are on W&B (project, entity, group, as nanolab.train named them) and the
    config keys their configurations differ by."""
    places, choices = set(), set()
    for run in runs:
        config = read_yaml(run.dir / ".hydra" / "config.yaml") or {}
        hydra = (read_yaml(run.dir / ".hydra" / "hydra.yaml") or {}).get("hydra", {})
        logger = config.get("logger") or {}
        runtime_choices = hydra.get("runtime", {}).get("choices", {})
        choices |= set(runtime_choices)
        sweep_dir = run.dir.parent if hydra.get("mode") == "MULTIRUN" else None
        group = wandb_group(logger.get("group"), runtime_choices.get("experiment"), sweep_dir)
        places.add((logger.get("entity"), logger.get("project", "nanolab"), group))
    if len(places) != 1 or next(iter(places))[2] is None:
        raise ConfigError(
            "--wandb-workspace needs the runs of one W&B group "
            f"(one sweep); these are in {sorted(map(str, places))}"
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
    *,
    wandb_workspace: bool = False,
    evaluated: bool = False,
    target: str | None = None,
    panels: str | None = None,
) -> Path:
    """Write the report of the runs under `paths` into `out` (default: the one directory given,
    or the common parent of several) and print its table; returns the report's path. With
    `evaluated`, the val metrics are those of each run's evaluation_val.json; with `target`
    (`val/ce=1.9`), each configuration's steps and tokens to it; with `panels` (a swept key),
    the plots against a swept number get a panel per value of it."""
    if sort not in [k for k, *_ in METRICS]:
        raise ConfigError(f"--sort {sort} is not one of {', '.join(k for k, *_ in METRICS)}")
    runs = [read_run(d) for d in find_run_dirs(paths)]
    evaluated_tokens = use_evaluations(runs) if evaluated else 0
    goal = parse_target(target, runs) if target else None
    if goal and not add_target(runs, goal):
        log.warning("no finished run reaches %s: the table says 'not reached' for each", goal)
    add_b_simple(runs)
    keys = fill_missing_params(runs)
    rows = group_rows(runs, keys, sort)
    critical = critical_batch(rows) if goal else None
    if panels is not None and panels not in keys:
        raise ConfigError(f"--panels {panels} is not a key these runs differ by: {keys}")
    swept = [
        k
        for k in keys
        if len(rows) > 1 and k != panels and all(is_number(r.params[k]) for r in rows)
    ]
    best = [best_value_section(rows, keys, k, sort) for k in swept]
    if out is None:
        out = (
            Path(paths[0])
            if len(paths) == 1
            else Path(os.path.commonpath([Path(p).resolve() for p in paths]))
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_text(
            out / "report.md",
            report_markdown(
                rows,
                keys,
                runs,
                sort,
                sources=paths,
                evaluated_tokens=evaluated_tokens,
                target=goal,
                critical=critical,
            )
            + "".join(f"\n\n{section}\n" for section in best),
        )
        _write_text(out / "report.csv", rows_csv(rows, keys, goal))
        _write_text(out / "runs.csv", runs_csv(runs, keys))
        import matplotlib

        matplotlib.use("Agg")  # files only; no display needed
        # labels are override values, which may hold a '$'
        matplotlib.rcParams["text.parse_math"] = False
        plot_curves(rows, keys, out / "curves.png")
        plot_final_values(rows, keys, out / "final.png")
        plot_sharpness(runs, keys, out / "sharpness.png")
        if frequency_bins_of(rows):
            plot_frequency(rows, keys, out / "frequency.png")
            # the curves need bins logged in training, not only in a whole-split evaluation
            logged = (k for row in rows for run in row.finished for r in run.records for k in r)
            if any(map(is_frequency_key, logged)):
                plot_frequency_curves(rows, keys, out / "frequency_curves.png")
        if goal and critical:
            plot_steps_vs_tokens(critical, goal, out / "steps_vs_tokens.png")
            plot_b_simple(critical, out / "b_simple.png")
            if critical.lr:
                plot_lr_vs_batch(critical.lr, critical.fit.b_crit, out / "lr_vs_batch.png")
        if any(k.startswith("model.") for k in keys) and size_columns(rows):
            plot_against_size(rows, keys, out / "metrics_vs_params.png")
        for key in swept:
            plot_metric_vs_value(
                rows, keys, key, sort, out / f"{sort.replace('/', '_')}_vs_{key}.png", panels
            )
    except OSError as e:
        raise ConfigError(
            f"cannot write the report to {out} ({e.strerror}); choose another --out"
        ) from e
    print(markdown_table(rows, keys))
    for section in best:
        print(f"\n{section}")
    if goal:
        print(target_table(rows, keys, goal))
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
        help="where to write the report (default: the directory given, or the common parent of "
        "several)",
    )
    parser.add_argument(
        "--sort",
        default="val/ce_calibrated",
        help="the metric rows are sorted by, and plotted against swept numbers "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--evaluated",
        action="store_true",
        help="val metrics from each run's evaluation_val.json (python -m nanolab.evaluate "
        "checkpoint=<run>/last.pt: the whole val split) instead of its last in-training evaluation",
    )
    parser.add_argument(
        "--target",
        metavar="METRIC=VALUE",
        help="also report each configuration's steps and tokens to reach VALUE of a logged "
        "metric, e.g. val/ce=1.9 (accuracies: at least VALUE; the rest: at most)",
    )
    parser.add_argument(
        "--wandb-workspace",
        action="store_true",
        help="also save a W&B workspace for the sweep's group (offline: write its definition to "
        "wandb_workspace.json)",
    )
    parser.add_argument(
        "--panels",
        metavar="KEY",
        help="in the plots against a swept number, one panel per value of this swept key "
        "(e.g. model.parametrization: SP beside μP)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with exit_on_config_error(log):
        compare(
            args.paths,
            args.out,
            args.sort,
            wandb_workspace=args.wandb_workspace,
            evaluated=args.evaluated,
            target=args.target,
            panels=args.panels,
        )


if __name__ == "__main__":
    main()

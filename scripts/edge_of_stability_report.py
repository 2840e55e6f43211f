"""The tables of docs/edge_of_stability.md from the runs scripts/edge_of_stability_study.sh wrote.

    python scripts/edge_of_stability_report.py multirun/edge_of_stability \
        --out docs/edge_of_stability
    python scripts/edge_of_stability_report.py docs/edge_of_stability  # from the committed CSV

From a sweep root it first writes trajectories.csv (every logged step of every run: train loss,
sharpness, Adam's preconditioned sharpness, the threshold) into --out; from a folder holding
trajectories.csv it reads that. Either way it prints the tables, and with --out writes tables.md
and sharpness_over_threshold.png there.

Every cell over seeds is the mean ± sample standard deviation of one number per seed; a window
"a-b" is the steps a < t <= b, and its number per seed the median of the measurements in it.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path

from nanolab.report import mean_std, table_markdown
from nanolab.results import find_run_dirs, read_run, read_yaml

COLUMNS = [
    "sweep",
    "loss",
    "optimizer",
    "lr",
    "seed",
    "status",
    "step",
    "train_loss",
    "sharpness",
    "precond_sharpness",
    "threshold",
]
Run = tuple[str, str, str, float]  # sweep, loss, optimizer, lr


def collect(root: Path) -> list[dict[str, str]]:
    """One row per logged step of every run under root/<sweep>/."""
    rows = []
    for sweep in sorted(p for p in root.iterdir() if p.is_dir()):
        for run_dir in find_run_dirs([str(sweep)]):
            run = read_run(run_dir)
            config = read_yaml(run_dir / ".hydra" / "config.yaml")
            steps: dict[int, dict[str, str]] = defaultdict(dict)
            for record in run.records:
                row = steps[record["step"]]
                for column, key in (
                    ("train_loss", "train/loss"),
                    ("sharpness", "sharpness/top1"),
                    ("precond_sharpness", "sharpness/precond_top1"),
                    ("threshold", "sharpness/threshold"),
                ):
                    if key in record:
                        row[column] = f"{float(record[key]):.6g}"
            for step in sorted(steps):
                rows.append(
                    {
                        "sweep": sweep.name,
                        "loss": config["loss"]["name"],
                        "optimizer": config["optim"]["name"],
                        "lr": repr(float(config["optim"]["lr"])),
                        "seed": str(run.seed),
                        "status": run.status,
                        "step": str(step),
                        **steps[step],
                    }
                )
    return rows


def by_run(rows: list[dict[str, str]]) -> dict[Run, dict[str, list[dict[str, str]]]]:
    """(sweep, loss, optimizer, lr) -> seed -> its rows in step order."""
    runs: dict[Run, dict[str, list[dict[str, str]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        key = (row["sweep"], row["loss"], row["optimizer"], float(row["lr"]))
        runs[key][row["seed"]].append(row)
    for seeds in runs.values():
        for steps in seeds.values():
            steps.sort(key=lambda r: int(r["step"]))
    return runs


def series(steps: list[dict[str, str]], column: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r[column])) for r in steps if r.get(column)]


def window_median(points: list[tuple[int, float]], lo: int, hi: int) -> float:
    inside = [v for step, v in points if lo < step <= hi]
    return statistics.median(inside) if inside else math.nan


def first_reach(points: list[tuple[int, float]], level: float) -> str:
    return next((str(step) for step, v in points if v >= level), "never")


def edge_table(
    runs: dict, sweeps: tuple[str, ...], column: str, factor: float, windows: list[tuple[int, int]]
) -> str:
    """Sharpness (or preconditioned sharpness) against the threshold, window by window."""
    head = [
        "loss",
        "optimizer",
        "lr",
        "threshold",
        "seeds",
        "S at step 0",
        "first S ≥ 0.9 × threshold (each seed)",
    ]
    head += [f"S / threshold, steps {lo}-{hi}" for lo, hi in windows]
    head += ["max S / threshold", "train loss, first log → last", "loss rises after reach"]
    body = []
    for (sweep, loss, optimizer, lr), seeds in sorted(runs.items()):
        if sweep not in sweeps:
            continue
        threshold = factor / lr
        ratios = {
            s: [(t, v / threshold) for t, v in series(rows, column)] for s, rows in seeds.items()
        }
        losses = {s: series(rows, "train_loss") for s, rows in seeds.items()}
        reach = {s: first_reach(r, 0.9) for s, r in ratios.items()}
        rises = []
        for s, points in losses.items():
            start = int(reach[s]) if reach[s] != "never" else math.inf
            after = [v for t, v in points if t >= start]
            rises.append(sum(b > a for a, b in zip(after, after[1:])))
        row = [
            loss,
            optimizer,
            f"{lr:g}",
            f"{threshold:,.4g}",
            str(len(seeds)),
            mean_std([series(rows, "sharpness")[0][1] for rows in seeds.values()], ".2f"),
            ", ".join(reach[s] for s in sorted(reach)),
        ]
        row += [
            mean_std([window_median(r, lo, hi) for r in ratios.values()], ".2f")
            for lo, hi in windows
        ]
        row += [mean_std([max(v for _, v in r) for r in ratios.values()], ".2f")]
        row += [" → ".join(mean_std([p[i][1] for p in losses.values()], ".3g") for i in (0, -1))]
        row += [", ".join(str(n) for n in rises) + f" of {len(next(iter(losses.values()))) - 1}"]
        body.append(row)
    return table_markdown(head, body)


def catapult_table(runs: dict) -> str:
    """The early phase at lr around 2/λ0: loss spike, sharpness drop, where the run settles."""
    head = [
        "loss",
        "lr",
        "seeds",
        "λ0 (S at step 0)",
        "lr × λ0 / 2",
        "rise of the loss (peak / best before it)",
        "step of the peak",
        "min S / (2/lr), steps 2-50",
        "S / (2/lr), steps 50-100",
        "diverged",
    ]
    body = []
    for (sweep, loss, _, lr), seeds in sorted(runs.items()):
        if not sweep.startswith("catapult"):
            continue
        lam0, rises, peaks, lows, ends, diverged = [], [], [], [], [], 0
        for rows in seeds.values():
            diverged += rows[0]["status"] == "diverged"
            sharp, losses = series(rows, "sharpness"), series(rows, "train_loss")
            lam0.append(sharp[0][1])
            best, rise, peak = math.inf, 1.0, 0
            for t, v in losses:
                if not math.isfinite(v):
                    break
                if v / best > rise:
                    rise, peak = v / best, t
                best = min(best, v)
            rises.append(rise)
            peaks.append(peak)
            lows.append(min((v * lr / 2 for t, v in sharp if 2 <= t <= 50), default=math.nan))
            ends.append(window_median([(t, v * lr / 2) for t, v in sharp], 50, 100))
        body.append(
            [
                loss,
                f"{lr:g}",
                str(len(seeds)),
                mean_std(lam0, ".2f"),
                mean_std([lr * v / 2 for v in lam0], ".2f"),
                mean_std(rises, ".2f"),
                ", ".join(map(str, peaks)),
                mean_std(lows, ".2f"),
                mean_std(ends, ".2f"),
                f"{diverged} of {len(seeds)}",
            ]
        )
    return table_markdown(head, body)


PANELS = (
    ("gd_ce", "sharpness", 2.0, "GD, cross-entropy: S / (2/lr)"),
    ("gd_mse", "sharpness", 2.0, "GD, square loss: S / (2/lr)"),
    ("adam", "precond_sharpness", 38.0, "Adam: preconditioned S / (38/lr)"),
    ("catapult_mse", "sharpness", 2.0, "catapult, square loss: S / (2/lr)"),
    ("catapult_ce", "sharpness", 2.0, "catapult, cross-entropy: S / (2/lr)"),
)


def plot(runs: dict, path: Path) -> None:
    """One panel per sweep: each run's sharpness over its threshold against step, one colour
    per lr (its seeds in the same colour); the threshold is the dashed line at 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.6), layout="constrained")
    for ax, (sweep, column, factor, title) in zip(axes, PANELS):
        lrs = sorted({lr for (name, _, _, lr) in runs if name == sweep})
        for (name, _, _, lr), seeds in sorted(runs.items()):
            if name != sweep:
                continue
            color = plt.cm.viridis(lrs.index(lr) / max(1, len(lrs) - 1) * 0.85)
            for i, rows in enumerate(seeds.values()):
                points = series(rows, column)
                ax.plot(
                    [t for t, _ in points],
                    [v * lr / factor for _, v in points],
                    color=color,
                    lw=1,
                    alpha=0.8,
                    label=f"lr {lr:g}" if i == 0 else None,
                )
        ax.axhline(1.0, color="black", ls="--", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3, which="both")
        if lrs:
            ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a sweep root, or a folder with trajectories.csv")
    parser.add_argument("--out", type=Path, help="where trajectories.csv and tables.md go")
    args = parser.parse_args()
    committed = args.source / "trajectories.csv"
    if committed.is_file():
        with open(committed) as f:
            rows = list(csv.DictReader(f))
    else:
        rows = collect(args.source)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            with open(args.out / "trajectories.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
    runs = by_run(rows)
    gd_windows = [(0, 250), (250, 500), (500, 750), (750, 1000), (1000, 1250), (1250, 1500)]
    text = "\n\n".join(
        [
            "## Full-batch GD: sharpness against 2/lr\n\n"
            + edge_table(runs, ("gd_ce", "gd_mse"), "sharpness", 2.0, gd_windows),
            "## Full-batch Adam: preconditioned sharpness against 38/lr\n\n"
            + edge_table(
                runs,
                ("adam",),
                "precond_sharpness",
                38.0,
                [(0, 200), (200, 400), (400, 600)],
            ),
            "## Catapult: GD at lr around 2/λ0, the first 100 steps\n\n" + catapult_table(runs),
        ]
    )
    print(text)
    if args.out:
        (args.out / "tables.md").write_text(text + "\n")
        plot(runs, args.out / "sharpness_over_threshold.png")


if __name__ == "__main__":
    main()

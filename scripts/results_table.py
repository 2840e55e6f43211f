"""Print a markdown table of a sweep's (or several runs') final metrics from their summary.json.

    python scripts/results_table.py multirun/2026-11-23_21-04-23
    python scripts/results_table.py outputs/2026-11-23/*/

This is how the README's quick-start table is made. It reads local files only (no W&B).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

COLUMNS = [
    ("final/val/ce", "val/ce", "{:.4f}"),
    ("final/val/ce_calibrated", "val/ce calibrated", "{:.4f}"),
    ("final/val/temperature", "T", "{:.2f}"),
    ("final/val/acc", "val/acc", "{:.4f}"),
    ("final/val/ece", "val/ece", "{:.4f}"),
    ("final/train_eval/ce", "train ce", "{:.4f}"),
    ("final/val/loss", "val/loss (objective)", "{:.4f}"),
    ("wall_time_s", "wall time (s)", "{:.0f}"),
]


def run_dirs(paths: list[str]) -> list[Path]:
    found = []
    for p in map(Path, paths):
        found += [p] if (p / "summary.json").exists() else sorted(d.parent for d in p.glob("*/summary.json"))
    return found


def main(paths: list[str]) -> None:
    dirs = run_dirs(paths)
    if not dirs:
        sys.exit(f"no run with a summary.json under {paths}")
    print("| run | " + " | ".join(title for _, title, _ in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for d in dirs:
        summary = json.loads((d / "summary.json").read_text())
        overrides = yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text()) or ["(defaults)"]
        cells = [fmt.format(summary[key]) if key in summary else "—" for key, _, fmt in COLUMNS]
        print(f"| {' '.join(overrides)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])

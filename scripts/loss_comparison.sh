#!/usr/bin/env bash
# Reproduce docs/loss_comparison/: 4 losses x 3 seeds on the CPU quick start (about 25 minutes
# on 2 cores), the comparison report, and a copy of it under docs/.
set -euo pipefail
cd "$(dirname "$0")/.."
sweep="multirun/loss_comparison_$(date +%Y-%m-%d_%H-%M-%S)"
python -m nanolab.train -m experiment=loss_comparison hydra.sweep.dir="$sweep"
python -m nanolab.compare "$sweep"
mkdir -p docs/loss_comparison
cp "$sweep"/report.md "$sweep"/report.csv "$sweep"/runs.csv "$sweep"/curves.png docs/loss_comparison/
echo "copied the report of $sweep to docs/loss_comparison/"

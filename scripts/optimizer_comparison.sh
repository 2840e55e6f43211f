#!/usr/bin/env bash
# Reproduce docs/optimizer_comparison/: eight optimizers x three seeds on the CPU quick start, each
# at its swept learning rate (the configs/optim/*.yaml defaults; scripts/optimizer_lr_sweep.sh
# chose them), the comparison report, and a copy of it under docs/. About an hour on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
sweep="multirun/optimizer_comparison_$(date +%Y-%m-%d_%H-%M-%S)"
python -m nanolab.train experiment=optimizer_comparison hydra.sweep.dir="$sweep"
python -m nanolab.compare "$sweep"
mkdir -p docs/optimizer_comparison
cp "$sweep"/report.md "$sweep"/report.csv "$sweep"/runs.csv "$sweep"/curves.png docs/optimizer_comparison/
echo "copied the report of $sweep to docs/optimizer_comparison/"

#!/usr/bin/env bash
# Reproduce docs/loss_comparison/: 4 losses x 3 seeds on the CPU quick start, each loss at the
# lr its own sweep chose and the square loss at its best (k, M) (experiment=loss_comparison_tuned,
# about 12 minutes on 2 cores), the comparison report, and a copy of it under docs/.
set -euo pipefail
cd "$(dirname "$0")/.."
sweep="multirun/loss_comparison_tuned_$(date +%Y-%m-%d_%H-%M-%S)"
python -m nanolab.train experiment=loss_comparison_tuned logger=none hydra.sweep.dir="$sweep"
python -m nanolab.compare "$sweep" --out docs/loss_comparison
echo "wrote the report of $sweep to docs/loss_comparison/"

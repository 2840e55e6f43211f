#!/usr/bin/env bash
# The batch-size study of issue 28 (docs/batch_size.md, to be written from its output): on the
# CPU quick start, 4 to 256 windows of 64 characters per step, each at every learning rate of
# its optimizer's grid, two seeds, each run to val/ce 2.0 or 4M tokens with the gradient noise
# scale measured (configs/experiment/batch_size.yaml); AdamW, then SGD with momentum. Then each
# sweep's report with steps and tokens to val/ce 2.0 and the fitted critical batch size, copied
# under docs/batch_size/<optimizer>/. Estimated from a 12-run pilot (982 s): 2-3 hours on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp="$(date +%Y-%m-%d_%H-%M-%S)"
declare -A grid=([adamw]="5e-4,1e-3,2e-3,4e-3,8e-3,1.6e-2" [sgd]="0.03,0.1,0.3,1,3")
for optim in adamw sgd; do
    sweep="multirun/batch_size_${optim}_${stamp}"
    python -m nanolab.train experiment=batch_size optim="$optim" optim.lr="${grid[$optim]}" \
        seed=1337,1338 hydra.sweep.dir="$sweep"
    python -m nanolab.compare "$sweep" --target val/ce=2.0
    mkdir -p "docs/batch_size/$optim"
    cp "$sweep"/report.md "$sweep"/report.csv "$sweep"/runs.csv "$sweep"/steps_vs_tokens.png \
        "docs/batch_size/$optim/"
    echo "copied the report of $sweep to docs/batch_size/$optim/"
done

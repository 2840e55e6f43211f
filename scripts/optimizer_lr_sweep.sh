#!/usr/bin/env bash
# The learning-rate sweep behind experiment=optimizer_comparison (its tuned_lr) and
# docs/optimizer_comparison.md: each optimizer at 4-6 learning rates spanning 10x or more around
# its literature default (extended where the best sat at an edge), on the quick start shortened
# to 1000 steps (the cosine schedule decays over those 1000), seed 1337, two runs at a time with
# one torch thread each. About 40 minutes on 2 cores.
#   bash scripts/optimizer_lr_sweep.sh [sweep root, default multirun/optimizer_lr_sweep_<time>]
set -euo pipefail
cd "$(dirname "$0")/.."
root="${1:-multirun/optimizer_lr_sweep_$(date +%Y-%m-%d_%H-%M-%S)}"
declare -A lrs=(
  [sgd]=0.03,0.1,0.3,1.0
  [adamw]=1e-3,2e-3,4e-3,1e-2,2e-2
  [adafactor]=3e-3,1e-2,3e-2,1e-1,3e-1,1.0
  [muon]=5e-3,1e-2,2e-2,5e-2
  [lion]=1e-4,3e-4,1e-3,3e-3
  [shampoo]=1e-3,3e-3,1e-2,3e-2
  [soap]=1e-3,3e-3,1e-2,3e-2
  [schedulefree_adamw]=1e-3,2.5e-3,5e-3,1e-2,2e-2,4e-2
)
for optim in sgd adamw adafactor muon lion shampoo soap schedulefree_adamw; do
  python -m nanolab.train -m optim="$optim" optim.lr="${lrs[$optim]}" trainer.max_iters=1000 threads=1 logger=none \
    hydra/launcher=joblib hydra.launcher.n_jobs=2 hydra.sweep.dir="$root/$optim"
done
python -m nanolab.compare "$root"/* --out "$root"
echo "report: $root/report.md"

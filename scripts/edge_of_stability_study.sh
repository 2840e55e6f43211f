#!/usr/bin/env bash
# Every run behind docs/edge_of_stability.md, then its tables and plots: full-batch GD with
# cross-entropy and with the square loss (3 lrs x 3 seeds each), full-batch Adam's
# preconditioned sharpness against 38/lr (3 lrs x 3 seeds), and the catapult runs (lr between
# 2/lambda0 and 4/lambda0, and either side of it; 4 lrs x 3 seeds per loss). Two one-thread
# runs at a time: about an hour on 2 cores.
#   bash scripts/edge_of_stability_study.sh [sweep root, default multirun/edge_of_stability]
set -euo pipefail
cd "$(dirname "$0")/.."
root="${1:-multirun/edge_of_stability}"
eos() { python -m nanolab.train experiment=edge_of_stability "$@"; }

# GD, cross-entropy: lr 0.01, 0.02, 0.05 (2/lr = 200, 100, 40), seeds 1337-1339 (the preset)
eos hydra.sweep.dir="$root/gd_ce"
# GD, square loss (plain MSE, k = M = 1): its sharpness at initialisation is 2.2 against
# cross-entropy's 10.9, and at lr <= 0.3 it stays far below 2/lr in 1500 steps, so larger lrs
eos loss=mse optim.lr=0.4,0.6,0.8 hydra.sweep.dir="$root/gd_mse"
# the catapult (Lewkowycz et al. 2020): lambda0 = 2.2 (mse) and 10.9 (ce) at initialisation
# (seed 1337, step 0 of the runs above), so 2/lambda0 = 0.91 and 0.18; one lr below that
# window, two inside (2/lambda0, 4/lambda0) and one above; the sharpness every 2 steps
catapult=(trainer.max_iters=100 sharpness.every=2 trainer.log_interval=1 trainer.eval_interval=100)
eos loss=mse optim.lr=0.7,1.2,1.6,2.2 "${catapult[@]}" hydra.sweep.dir="$root/catapult_mse"
eos loss=ce optim.lr=0.15,0.25,0.33,0.45 "${catapult[@]}" hydra.sweep.dir="$root/catapult_ce"
# full-batch Adam (betas 0.9, 0.99): sharpness/precond_top1 against 38/lr
eos optim=adam '~optim.momentum' optim.lr=3e-4,1e-3,3e-3 trainer.max_iters=600 hydra.sweep.dir="$root/adam"

for sweep in gd_ce gd_mse adam catapult_mse catapult_ce; do
  python -m nanolab.compare "$root/$sweep" --out "docs/edge_of_stability/$sweep"
done
python scripts/edge_of_stability_report.py "$root" --out docs/edge_of_stability

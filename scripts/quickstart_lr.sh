#!/usr/bin/env bash
# The quick start at nanoGPT's lr (1e-3) and at nanolab's default (2e-3), scored on 100 val
# batches: the numbers behind configs/optim/adamw.yaml's lr and docs/usage.md's comparison with
# nanoGPT's README (val loss 1.88 at 1e-3). Two one-thread runs side by side: about 5 minutes.
#   bash scripts/quickstart_lr.sh [sweep dir, default multirun/quickstart_lr]
set -euo pipefail
cd "$(dirname "$0")/.."
sweep="${1:-multirun/quickstart_lr}"
python -m nanolab.train -m optim.lr=1e-3,2e-3 trainer.eval_iters=100 logger=none threads=1 \
  hydra/launcher=joblib hydra.launcher.n_jobs=2 hydra.sweep.dir="$sweep"
python -m nanolab.compare "$sweep" --out "$sweep"

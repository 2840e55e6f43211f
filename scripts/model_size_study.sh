#!/usr/bin/env bash
# Every run behind docs/model_size.md, then its report under docs/model_size/: the quick start at
# 4 widths x 2 depths x 2 seeds, each at the quick start's lr for equal steps (the page's own
# caveat: docs/choosing_size.md re-asks it at each size's own lr and at equal FLOPs). Two
# one-thread runs at a time: about 35 minutes on 2 cores.
#   bash scripts/model_size_study.sh [sweep root, default multirun/model_size]
set -euo pipefail
cd "$(dirname "$0")/.."
root="${1:-multirun/model_size}"
python -m nanolab.train experiment=model_size logger=none hydra.sweep.dir="$root"
python -m nanolab.compare "$root" --out docs/model_size

#!/usr/bin/env bash
# The width-and-depth study of issue 27 (docs/choosing_size.md), on shakespeare_char:
#   coord     python -m nanolab.coord_check: SP, μP and the broken control, widths 64-1024
#   transfer  experiment=mup_transfer: widths 64-512 x 7 lrs x {sp, mup}, weight decay 0.1, and
#             SP at width 512 two lrs lower (its best was the grid's lowest)
#   wd0       the same at weight decay 0, widths 64 and 256 (the control for the decay rule)
#   depth     experiment=mup_depth: width 128, depths 2/4/8, depth_alpha 0 and 1, 5 lrs
#   isoflop   experiment=isoflop at each budget of BUDGETS, widths around the prior; a budget
#             whose best width is at an end gets the next width (nanolab.scaling's extend.txt)
#   sizes     widths 64-256 x depths 2 and 4 at lr 2^-6 (width 64's best), 3 seeds, equal steps:
#             in SP (one lr for every size, the naive comparison) and in μP (each size at the
#             lr it transfers)
#   report    every compare report and the IsoFLOP fit
# Each stage is a Hydra multirun under OUT; a rerun skips finished runs (resume=true).
#   bash scripts/choosing_size_study.sh                         # everything (OUT=multirun/choosing_size)
#   STAGES="coord report" bash scripts/choosing_size_study.sh   # some stages
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-multirun/choosing_size}
stages=${STAGES:-coord transfer wd0 depth isoflop sizes report}
lr=${MUP_LR:-0.015625}  # μP's transferred lr: the best at width 64 in the transfer stage
common=(logger=none resume=true)
has() { [[ " $stages " == *" $1 "* ]]; }

if has coord; then
    python -m nanolab.coord_check out="$out/coord"
fi
if has transfer; then
    python -m nanolab.train experiment=mup_transfer "${common[@]}" hydra.sweep.dir="$out/transfer"
    # SP's best at width 512 was the grid's lowest lr: two more below it, so it is interior
    python -m nanolab.train experiment=mup_transfer "${common[@]}" model.parametrization=sp \
        model.n_embd=512 optim.lr=0.00048828125,0.000244140625 hydra.sweep.dir="$out/transfer_low"
fi
if has wd0; then
    python -m nanolab.train experiment=mup_transfer "${common[@]}" optim.weight_decay=0 \
        model.n_embd=256,64 hydra.sweep.dir="$out/transfer_wd0"
fi
if has depth; then
    python -m nanolab.train experiment=mup_depth "${common[@]}" hydra.sweep.dir="$out/depth"
fi
if has isoflop; then
    # budget: the widths centred (in log N) on a prior of about 20 tokens per parameter
    declare -A widths=(
        [3e11]=32,48,64,96,128
        [1e12]=32,48,64,96,128
        [3e12]=48,64,96,128,192
        [1e13]=64,96,128,192,256
    )
    for budget in ${BUDGETS:-3e11 1e12 3e12 1e13}; do
        python -m nanolab.train experiment=isoflop "${common[@]}" optim.lr="$lr" \
            trainer.flops_budget="$budget" model.n_embd="${widths[$budget]}" \
            hydra.sweep.dir="$out/isoflop/$budget"
    done
    # extend, once, each budget whose lowest loss is at an end of its widths
    python -m nanolab.scaling "$out"/isoflop/*/ --out "$out/isoflop" > /dev/null || true
    while read -r budget width; do
        python -m nanolab.train experiment=isoflop "${common[@]}" optim.lr="$lr" \
            trainer.flops_budget="$budget" model.n_embd="$width" \
            hydra.sweep.dir="$out/isoflop/${budget}_extended_$width"
    done < "$out/isoflop/extend.txt"
fi
if has sizes; then
    python -m nanolab.train experiment=mup_transfer "${common[@]}" optim.lr="$lr" \
        model.n_embd=256,128,64 model.n_layer=4,2 seed=1337,1338,1339 \
        hydra.sweep.dir="$out/sizes"
fi
if has report; then
    python -m nanolab.compare "$out/transfer" "$out/transfer_low" --out "$out/transfer_report" \
        --sort val/ce --panels model.parametrization
    python -m nanolab.compare "$out/transfer_wd0" --sort val/ce --panels model.parametrization
    python -m nanolab.compare "$out/depth" --sort val/ce --panels model.depth_alpha
    python -m nanolab.compare "$out/sizes" --sort val/ce
    python -m nanolab.scaling "$out"/isoflop/*/ --out "$out/isoflop" --recommend 1e14
fi

#!/usr/bin/env bash
# The batch-size study of issue 28 (docs/batch_size.md): on the CPU quick start, 4 to 256
# windows of 64 characters per step (256 to 16,384 tokens), each batch size at its own grid of
# learning rates (a factor of 2 apart, centred where a one-seed AdamW pilot found the optimum;
# extended where the best sat at an end), two seeds each, every run to val/ce 2.0 or 4M tokens
# with the gradient noise scale measured (configs/experiment/batch_size.yaml). Each
# (optimizer, batch size, lr) is its own two-seed sweep under multirun/batch_size/, launched
# with resume=true: rerunning the script after widening a grid runs only the new points. Then
# one report per optimizer (steps and tokens to val/ce 2.0, the fitted critical batch size,
# B_simple, the best lr against batch size), written to docs/batch_size/<optimizer>/.
#   bash scripts/batch_size_study.sh             # AdamW, then SGD with momentum
#   bash scripts/batch_size_study.sh muon        # one optimizer (Muon: the preconditioned arm)
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A grid=(
    [adamw:2]="1e-3 2e-3 4e-3"
    [adamw:8]="2e-3 4e-3 8e-3"
    [adamw:32]="2e-3 4e-3 8e-3 1.6e-2"
    [adamw:128]="1e-3 2e-3 4e-3 8e-3"
    [sgd:2]="0.03 0.1 0.3 1"
    [sgd:8]="0.1 0.3 1"
    [sgd:32]="0.1 0.3 1 3"
    [sgd:128]="0.1 0.3 1"
    [muon:2]="0.005 0.01 0.02"
    [muon:8]="0.01 0.02 0.04"
    [muon:32]="0.01 0.02 0.04"
    [muon:128]="0.02 0.04 0.08"
)
optims=("$@")
[ ${#optims[@]} -gt 0 ] || optims=(adamw sgd)
for optim in "${optims[@]}"; do
    for batch in 2 8 32 128; do
        for lr in ${grid[$optim:$batch]}; do
            # Muon's AdamW part (embeddings, head, norms) moves with Muon's lr, at the 1:10
            # ratio of configs/optim/muon.yaml
            tied=()
            [ "$optim" != muon ] || tied=("optim.adamw_lr=$(python -c "print($lr / 10)")")
            python -m nanolab.train -m experiment=batch_size optim="$optim" \
                trainer.batch_size="$batch" optim.lr="$lr" "${tied[@]}" seed=1337,1338 \
                resume=true hydra.sweep.dir="multirun/batch_size/$optim/b${batch}_lr${lr}"
        done
    done
    python -m nanolab.compare multirun/batch_size/"$optim"/*/*/ --target val/ce=2.0 \
        --out "docs/batch_size/$optim"
done

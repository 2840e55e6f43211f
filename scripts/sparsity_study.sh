#!/usr/bin/env bash
# The sparsity study of issue 31 (docs/sparsity.md): nano on shakespeare_char, 2000 steps, the
# default AdamW at lr 2e-3 with cosine decay to 1e-4, seeds 1337-1339.
#   1. train, two runs at a time on one thread each:
#      dense (widths 64 and 128), gradual pruning during training (sparsity.final 0.5, 0.75,
#      0.9 at width 128; 0.9375 at width 256, which leaves width 64's non-zero count), and the
#      penalties (sparsity.l1 1e-5 and 1e-4; sparsity.group_lasso 1e-4 and 1e-3);
#   2. prune each seed's dense model: one-shot magnitude (0.5, 0.75, 0.9, each then fine-tuned
#      500 steps at 1e-4, the schedule's last lr; the dense model fine-tuned alike as control), IMP (rounds to 0.5, 0.75, 0.9, rewound to
#      step 100 and retrained to step 2000 each round), structured (a quarter, half and three
#      quarters of the heads and MLP neurons, fine-tuned 500 steps); the L1 runs one-shot, the
#      group-lasso runs structured, the same way; every trained model scored as it is;
#   3. measure (seed 1337, nothing else running, two threads): bytes, ms per forward pass,
#      sampling tokens/s, float32 and int8, of the dense, pruned and small models;
#   4. the tables and the figure (scripts/sparsity_report.py; docs/sparsity/ holds the study's).
# Reruns skip what is done (a run's last.pt at step 2000, a report's prune.csv).
#   bash scripts/sparsity_study.sh                       # the study (OUT=multirun/sparsity)
#   OUT=/tmp/sp SEEDS="1337" STEPS=40 bash scripts/sparsity_study.sh   # a smoke test
#   STAGES=measure bash scripts/sparsity_study.sh         # the timings again, on an idle machine
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-multirun/sparsity}
seeds=${SEEDS:-1337 1338 1339}
steps=${STEPS:-2000}
stages=${STAGES:-train prune measure}  # a subset reruns only those stages
finetune=$((steps / 4))
rewind=$((steps / 20))
mkdir -p "$out/train" "$out/prune" "$out/measure"
common=(logger=none trainer.max_iters="$steps" trainer.eval_interval="$steps")

arms=(dense128 dense64 gradual50 gradual75 gradual90 wide256_gradual9375 l1_1e-5 l1_1e-4
    glasso_1e-4 glasso_1e-3)
overrides() {  # what each arm sets besides the seed
    case $1 in
        dense128) ;;
        dense64) echo "model.n_embd=64" ;;
        gradual50) echo "sparsity.final=0.5" ;;
        gradual75) echo "sparsity.final=0.75" ;;
        gradual90) echo "sparsity.final=0.9" ;;
        wide256_gradual9375) echo "model.n_embd=256 sparsity.final=0.9375" ;;
        l1_*) echo "sparsity.l1=${1#l1_}" ;;
        glasso_*) echo "sparsity.group_lasso=${1#glasso_}" ;;
    esac
}

train_one() {  # train_one <arm> <seed>, unless its last.pt is at the last step
    local dir=$out/train/$1-s$2
    if [ -f "$dir/last.pt" ] && python - "$dir" "$steps" <<'PY'; then return 0; fi
import sys, torch
state = torch.load(f"{sys.argv[1]}/last.pt", weights_only=True, mmap=True)
sys.exit(0 if state["step"] == int(sys.argv[2]) else 1)
PY
    # shellcheck disable=SC2046
    python -m nanolab.train "${common[@]}" $(overrides "$1") seed="$2" threads=1 resume=true \
        hydra.run.dir="$dir" >"$dir.log" 2>&1 || echo "$dir: failed (see $dir.log)"
}

if [[ " $stages " == *" train "* ]]; then
    echo "$(date -u +%FT%TZ) training, two runs at a time"
    for seed in $seeds; do
        for arm in "${arms[@]}"; do
            train_one "$arm" "$seed" &
            while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n; done
        done
    done
    wait
fi

prune() {  # prune <name> <run> <overrides...>: one report folder, once
    local name=$1 run=$2
    shift 2
    [ -f "$out/prune/$name/prune.csv" ] && return 0
    python -m nanolab.prune checkpoint="$out/train/$run/last.pt" out="$out/prune/$name" "$@" \
        >"$out/prune/$name.log" 2>&1 || echo "$name: failed (see $out/prune/$name.log)"
}

prune_seed() {  # every report of one seed
    local seed=$1
    for arm in "${arms[@]}"; do  # every trained model as it is
        prune "$arm-asis-s$seed" "$arm-s$seed" "amounts=[0]"
    done
    # the dense model fine-tuned as the pruned ones are: the control at their budget
    prune "dense128-ftcontrol-s$seed" "dense128-s$seed" "amounts=[0]" finetune_steps=$finetune
    for run in dense128 l1_1e-5 l1_1e-4; do
        prune "$run-oneshot-s$seed" "$run-s$seed" "amounts=[0.5,0.75,0.9]" \
            finetune_steps=$finetune
    done
    prune "dense128-imp-s$seed" "dense128-s$seed" method=imp "amounts=[0.5,0.75,0.9]" \
        rewind_step=$rewind
    for run in dense128 glasso_1e-4 glasso_1e-3; do
        prune "$run-structured-s$seed" "$run-s$seed" method=structured \
            "amounts=[0.25,0.5,0.75]" finetune_steps=$finetune
    done
}

if [[ " $stages " == *" prune "* ]]; then
    echo "$(date -u +%FT%TZ) pruning, two seeds at a time on one thread each"
    for seed in $seeds; do
        OMP_NUM_THREADS=1 prune_seed "$seed" &
        while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n; done
    done
    wait
fi

first=${seeds%% *}
measure() {  # measure <name> <checkpoint> <overrides...>: timed, so one at a time
    local name=$1 checkpoint=$2
    shift 2
    [ -f "$out/measure/$name/prune.csv" ] && return 0
    python -m nanolab.prune checkpoint="$checkpoint" out="$out/measure/$name" int8=true \
        measure=true "$@" >"$out/measure/$name.log" 2>&1 || echo "$name: failed"
}
if [[ " $stages " == *" measure "* ]]; then
    echo "$(date -u +%FT%TZ) measuring, one model at a time"
    measure dense128 "$out/train/dense128-s$first/last.pt" "amounts=[0,0.5,0.9]"
    measure dense64 "$out/train/dense64-s$first/last.pt" "amounts=[0]"
    measure gradual90 "$out/train/gradual90-s$first/last.pt" "amounts=[0]"
    measure wide256_gradual9375 "$out/train/wide256_gradual9375-s$first/last.pt" "amounts=[0]"
    measure structured "$out/train/dense128-s$first/last.pt" method=structured \
        "amounts=[0.25,0.5,0.75]"
fi
echo "$(date -u +%FT%TZ) done"
python scripts/sparsity_report.py "$out" "$steps" "$out/accuracy.png"

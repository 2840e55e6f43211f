#!/usr/bin/env bash
# Every run behind docs/square_loss.md, in order, then the reports copied into docs/square_loss/.
# Each stage is one preset (configs/experiment/); the tuned presets hold the lrs and (k, M) the
# sweeps before them chose. Two runs at a time with one torch thread each: about 3 hours on a
# 2-core CPU (the BPE stages are two thirds of it).
#   bash scripts/square_loss_study.sh [sweep root, default multirun/square_loss]
set -euo pipefail
cd "$(dirname "$0")/.."
root="${1:-multirun/square_loss}"
bpe=(data=shakespeare trainer.max_iters=500 trainer.eval_interval=125)
train() { python -m nanolab.train logger=none "$@"; }

# 65 classes (the quick start)
train experiment=loss_lr_sweep hydra.sweep.dir="$root/lr_sweep"
train experiment=mse_rescaling hydra.sweep.dir="$root/mse_rescaling"
train experiment=mse_rescaling loss.k=1 loss.M=5 optim.lr=5e-4,2e-3 hydra.sweep.dir="$root/mse_rescaled_lr"
train experiment=loss_comparison_tuned hydra.sweep.dir="$root/tuned_2000"
train experiment=loss_comparison_tuned trainer.max_iters=4000 hydra.sweep.dir="$root/tuned_4000"
# 50,257 classes (GPT-2 BPE)
train experiment=loss_lr_sweep "${bpe[@]}" loss=ce,label_smoothing,squentropy optim.lr=1e-3,3e-3,1e-2 hydra.sweep.dir="$root/bpe_lr_sweep"
train experiment=mse_rescaling "${bpe[@]}" loss.k=1,15 loss.M=1,30 optim.lr=3e-3 hydra.sweep.dir="$root/bpe_mse_rescaling"
train experiment=mse_rescaling "${bpe[@]}" loss.k=15 loss.M=30 optim.lr=1e-3,1e-2 hydra.sweep.dir="$root/bpe_mse_lr"
train experiment=loss_comparison_bpe hydra.sweep.dir="$root/bpe_final"

for stage in lr_sweep mse_rescaling tuned_2000 tuned_4000 bpe_lr_sweep bpe_final; do
  python -m nanolab.compare "$root/$stage" --out "docs/square_loss/$stage"
done
python -m nanolab.compare "$root/mse_rescaling" "$root/mse_rescaled_lr" --out docs/square_loss/mse_rescaling_lr
python -m nanolab.compare "$root/bpe_mse_rescaling" "$root/bpe_mse_lr" --out docs/square_loss/bpe_mse_rescaling

#!/usr/bin/env bash
# Every run behind docs/square_loss.md, in the order they ran, then the reports under
# docs/square_loss/. The tuned presets hold the lrs and (k, M) that the sweeps before them
# chose; each later stage used the earlier stages' results as written here. Two runs at a time
# with one torch thread each: about 7 hours of single-thread run time, 3.5 hours on 2 cores.
#   bash scripts/square_loss_study.sh [sweep root, default multirun]
set -euo pipefail
cd "$(dirname "$0")/.."
root="${1:-multirun}"
train() { python -m nanolab.train logger=none "$@"; }

# 65 classes: the quick start (nano model, character-level Shakespeare, 2000 steps)
train experiment=loss_lr_sweep hydra.sweep.dir="$root/loss_lr_sweep"                              # 4 losses x 6 lrs
train experiment=mse_rescaling optim.lr=0.001 hydra.sweep.dir="$root/mse_rescaling"               # (k, M) grid at plain MSE's best lr
train -m experiment=mse_rescaling optim.lr=0.001 loss.k=30,60,120 loss.M=1 hydra.sweep.dir="$root/mse_rescaling_k"   # its best sat at k=15, M=1: k extended
train -m experiment=mse_rescaling optim.lr=0.001 loss.k=30 loss.M=5 hydra.sweep.dir="$root/mse_rescaling_k2"
train experiment=mse_rescaling loss.k=30 loss.M=1 optim.lr=0.0005,0.002 hydra.sweep.dir="$root/mse_rescaled_lr"      # the lr at the best (k, M)
train experiment=mse_rescaling loss.k=30 loss.M=1 optim.lr=0.004,0.008 hydra.sweep.dir="$root/mse_rescaled_lr2"
train experiment=loss_comparison_tuned hydra.sweep.dir="$root/loss_comparison_tuned"              # 4 losses x 3 seeds
train experiment=loss_comparison_tuned trainer.max_iters=4000 loss=ce,mse_rescaled hydra.sweep.dir="$root/loss_comparison_tuned_4000"

# 50,257 classes: GPT-2 BPE (every stage through experiment=loss_comparison_bpe, so that the
# sweeps' seed-1337 runs are the final comparison's first seed)
train experiment=loss_comparison_bpe seed=1337 loss=ce,label_smoothing,squentropy optim.lr=0.001,0.003,0.01 hydra.sweep.dir="$root/bpe_lr_sweep"
train experiment=loss_comparison_bpe seed=1337 loss=mse_rescaled_bpe loss.k=1,30 loss.M=1,30 optim.lr=0.003 hydra.sweep.dir="$root/bpe_mse_rescaling"
train experiment=loss_comparison_bpe seed=1337 loss=mse_rescaled_bpe loss.k=30 loss.M=30 optim.lr=0.001,0.01 hydra.sweep.dir="$root/bpe_mse_lr"
train -m experiment=loss_comparison_bpe seed=1337 loss=mse_rescaled_bpe loss.k=30 loss.M=30 optim.lr=0.0003 hydra.sweep.dir="$root/bpe_mse_lr2"
train -m experiment=loss_comparison_bpe seed=1337 loss=mse_rescaled_bpe loss.k=100 loss.M=30 optim.lr=0.001 hydra.sweep.dir="$root/bpe_mse_ext"
train -m experiment=loss_comparison_bpe seed=1337 loss=mse_rescaled_bpe loss.k=30 loss.M=100 optim.lr=0.001 hydra.sweep.dir="$root/bpe_mse_ext2"
# the first version's final comparison (§2.3), the square loss at its choice then, (100, 30) at 1e-3
train experiment=loss_comparison_bpe seed=1338,1339 loss=ce,label_smoothing hydra.sweep.dir="$root/loss_comparison_bpe"
train experiment=loss_comparison_bpe seed=1338,1339 loss=squentropy hydra.sweep.dir="$root/loss_comparison_bpe_rerun"
train experiment=loss_comparison_bpe seed=1338,1339 loss=mse_rescaled_bpe loss.k=100 loss.M=30 optim.lr=0.001 hydra.sweep.dir="$root/loss_comparison_bpe_rerun"
# run beside the final seeds, after the choice (docs/square_loss.md §2.2):
train -m experiment=loss_comparison_bpe seed=1337 loss=mse_rescaled_bpe loss.k=300 loss.M=30 optim.lr=0.001 hydra.sweep.dir="$root/bpe_mse_ext3a"
train -m experiment=loss_comparison_bpe seed=1337 loss=mse_rescaled_bpe loss.k=100 loss.M=100 optim.lr=0.001 hydra.sweep.dir="$root/bpe_mse_ext3b"
train -m experiment=loss_comparison_bpe seed=1337 loss=mse_rescaled_bpe loss.k=100 loss.M=30 optim.lr=0.0003,0.003 hydra.sweep.dir="$root/bpe_mse_ext3c"
# every BPE run scored on the whole val split (36,032 tokens; evaluation_val.json beside it):
# the axis of the reports below (compare --evaluated), far less noisy than 10 batches
evaluate_all() { for run in "$@"; do [ -f "$run/evaluation_val.json" ] || python -m nanolab.evaluate "checkpoint='$run/last.pt'"; done; }
evaluate_all "$root"/bpe_*/*/ "$root"/loss_comparison_bpe/*/ "$root"/loss_comparison_bpe_rerun/*/
# on that axis the square loss's best was still at an edge: larger k, and the lr around each
train experiment=loss_comparison_bpe seed=1337 loss=mse_rescaled_bpe loss.k=300,1000 loss.M=30 optim.lr=0.0003,0.003 hydra.sweep.dir="$root/bpe_mse_ext4a"
train -m experiment=loss_comparison_bpe seed=1337 loss=mse_rescaled_bpe loss.k=1000 loss.M=30 optim.lr=0.001 hydra.sweep.dir="$root/bpe_mse_ext4b"
train experiment=loss_comparison_bpe seed=1337 loss=mse_rescaled_bpe loss.k=1000,3000 loss.M=30 optim.lr=0.0001 hydra.sweep.dir="$root/bpe_mse_ext5a"
train experiment=loss_comparison_bpe seed=1337 loss=mse_rescaled_bpe loss.k=3000,10000 loss.M=30 optim.lr=0.0003 hydra.sweep.dir="$root/bpe_mse_ext5b"
train experiment=loss_comparison_bpe seed=1337 loss=mse_rescaled_bpe loss.k=10000 loss.M=30 optim.lr=0.0001,0.001 hydra.sweep.dir="$root/bpe_mse_ext6a"
train -m experiment=loss_comparison_bpe seed=1337 loss=mse_rescaled_bpe loss.k=10000 loss.M=100 optim.lr=0.0003 hydra.sweep.dir="$root/bpe_mse_ext6b"
# the final square-loss seeds at the chosen (10,000, 30) and 3e-4, today's preset
train experiment=loss_comparison_bpe loss=mse_rescaled_bpe loss.k=10000 loss.M=30 optim.lr=0.0003 seed=1338,1339 hydra.sweep.dir="$root/bpe_mse_final"
evaluate_all "$root"/bpe_mse_ext[4-6]*/*/ "$root"/bpe_mse_final/*/

report() { out="docs/square_loss/$1"; shift; python -m nanolab.compare "$@" --out "$out"; }
report lr_sweep "$root/loss_lr_sweep"
report mse_rescaling "$root/mse_rescaling" "$root/mse_rescaling_k" "$root/mse_rescaling_k2"
train -m experiment=mse_rescaling loss.k=30 loss.M=1 optim.lr=0.016 hydra.sweep.dir="$root/mse_rescaled_lr3"
train -m experiment=mse_rescaling loss.k=15,60 loss.M=1 optim.lr=0.008 hydra.sweep.dir="$root/mse_rescaling_k_at_lr"
report mse_rescaled_lr "$root/mse_rescaling_k" "$root/mse_rescaled_lr" "$root/mse_rescaled_lr2" "$root/mse_rescaled_lr3" "$root/mse_rescaling_k_at_lr"
report tuned_2000 "$root/loss_comparison_tuned"
report tuned_4000 "$root/loss_comparison_tuned_4000"
report bpe_lr_sweep "$root/bpe_lr_sweep" --evaluated
report bpe_mse $(ls -d "$root"/bpe_mse_* | grep -v final) --evaluated
report bpe_final "$root/bpe_lr_sweep/1_experiment=loss_comparison_bpe,logger=none,loss=ce,optim.lr=0.003,seed=1337" \
  "$root/bpe_lr_sweep/4_experiment=loss_comparison_bpe,logger=none,loss=label_smoothing,optim.lr=0.003,seed=1337" \
  "$root/bpe_lr_sweep/7_experiment=loss_comparison_bpe,logger=none,loss=squentropy,optim.lr=0.003,seed=1337" \
  "$root"/bpe_mse_ext/0_* "$root"/bpe_mse_ext5b/1_* "$root/bpe_mse_final" "$root/loss_comparison_bpe" "$root/loss_comparison_bpe_rerun" --evaluated

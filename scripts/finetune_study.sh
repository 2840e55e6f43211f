#!/usr/bin/env bash
# Every run behind docs/finetune.md, then its report: a nano model pretrained on other English
# (the Debian license texts, 300 steps), fine-tuned on tiny Shakespeare in GPT-2 tokens for 200
# steps, against training from scratch matched in fine-tuning steps (200) and in total tokens
# (500 steps: 300 + 200). Each arm's lr is swept on its own schedule (seed 1337); the arm's best
# on the whole val split then runs two more seeds. Two one-thread runs at a time: about an hour
# on 2 cores.
#   bash scripts/finetune_study.sh [sweep root, default multirun/finetune]
set -euo pipefail
cd "$(dirname "$0")/.."
root="${1:-multirun/finetune}"
pretrained="$root/pretrained_licenses"
train() { python -m nanolab.train logger=none "$@"; }
evaluate_all() {
  for run in "$@"; do
    [ -f "$run/evaluation_val.json" ] || python -m nanolab.evaluate "checkpoint='${run%/}/last.pt'"
  done
}
# the lr of a sweep's run with the lowest calibrated val/ce on the whole val split
best_lr() {
  python - "$1" <<'PY'
import json, sys, yaml
from pathlib import Path
scored = []
for run in Path(sys.argv[1]).glob("*/evaluation_val.json"):
    lr = yaml.safe_load((run.parent / ".hydra" / "config.yaml").read_text())["optim"]["lr"]
    scored.append((json.loads(run.read_text())["ce_calibrated"], lr))
lrs = sorted(lr for _, lr in scored)
best = min(scored)[1]
if best in (lrs[0], lrs[-1]):
    print(f"{sys.argv[1]}: the best lr {best} is at an end of {lrs}; extend the sweep", file=sys.stderr)
print(best)
PY
}

[ -f "$pretrained/last.pt" ] || train data=text data.name=licenses data.path=/usr/share/common-licenses \
  data.tokenizer=gpt2 trainer.max_iters=300 hydra.run.dir="$pretrained"

ft=(experiment=finetune_shakespeare "pretrained=$pretrained")
scratch=(experiment=finetune_shakespeare pretrained=null)
long=(trainer.max_iters=500 schedule.warmup_iters=50 trainer.eval_interval=100)  # 300 + 200 steps
train "${ft[@]}" seed=1337 optim.lr=3e-4,1e-3,3e-3 hydra.sweep.dir="$root/finetune_lr"
train "${scratch[@]}" seed=1337 optim.lr=1e-3,3e-3,1e-2 hydra.sweep.dir="$root/scratch_200_lr"
train "${scratch[@]}" "${long[@]}" seed=1337 optim.lr=1e-3,3e-3,1e-2 hydra.sweep.dir="$root/scratch_500_lr"
evaluate_all "$root"/*_lr/*/

train "${ft[@]}" seed=1338,1339 optim.lr="$(best_lr "$root/finetune_lr")" hydra.sweep.dir="$root/finetune_seeds"
train "${scratch[@]}" seed=1338,1339 optim.lr="$(best_lr "$root/scratch_200_lr")" hydra.sweep.dir="$root/scratch_200_seeds"
train "${scratch[@]}" "${long[@]}" seed=1338,1339 optim.lr="$(best_lr "$root/scratch_500_lr")" \
  hydra.sweep.dir="$root/scratch_500_seeds"
evaluate_all "$root"/*_seeds/*/

python -m nanolab.compare "$root"/*_lr "$root"/*_seeds --evaluated --out docs/finetune

#!/usr/bin/env bash
# The long-tail study of issue 30 (docs/long_tail.md), on configs/experiment/long_tail.yaml:
#   1. an lr sweep of every arm (seed 1337): SGD with momentum (cross-entropy), and AdamW with
#      each loss: ce, label smoothing, focal, logit-adjusted, class-balanced, the rescaled
#      square loss at its BPE (k, M);
#   2. every run scored on the whole val split by nanolab.evaluate (10 equal-mass frequency
#      bins), and each arm's lr chosen on that calibrated val/ce; a choice at an end of its
#      grid is printed (widen that grid; class_balanced's stayed flat down to 1e-4, where the
#      study stopped widening it: docs/long_tail.md);
#   3. seeds 1338 and 1339 at each chosen lr, scored the same way;
#   4. the reports: docs/long_tail/tune (every sweep run), docs/long_tail/optimizers (SGD
#      against AdamW, 3 seeds each) and docs/long_tail/losses (the AdamW losses, 3 seeds each).
# Reruns skip finished runs and evaluations (resume=true; evaluation_val.json of the final step).
#   bash scripts/long_tail_study.sh                      # the study
#   RUNS=/tmp/lt DOCS=/tmp/lt_docs bash scripts/long_tail_study.sh trainer.max_iters=4 ...
#       (extra overrides go to every run: a smoke test)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-multirun/long_tail}
docs=${DOCS:-docs/long_tail}
extra=("$@")
# Values added after a first pass (whose best sat at an end) go last, so that the jobs already
# run keep their numbers and a rerun skips them.
declare -A grid=(
    [sgd]="0.1,0.3,1,3,10,0.03"
    [ce]="1e-3,3e-3,1e-2,3e-4"
    [label_smoothing]="1e-3,3e-3,1e-2,3e-4"
    [focal]="1e-3,3e-3,1e-2,3e-4"
    [logit_adjusted]="1e-3,3e-3,1e-2,3e-4,1e-4"
    [class_balanced]="1e-3,3e-3,1e-2,3e-4,1e-4"
    [mse_rescaled_bpe]="1e-4,3e-4,1e-3,3e-5"
)
arms=(sgd ce label_smoothing focal logit_adjusted class_balanced mse_rescaled_bpe)

# what each arm overrides besides optim.lr and the seed
setting() {
    case $1 in
        sgd) echo "optim=sgd loss=ce" ;;
        *) echo "optim=adamw loss=$1" ;;
    esac
}

train() {  # train <arm> <lrs> <seeds> <sweep dir>; a diverged run (an lr too large) is a result
    # shellcheck disable=SC2046
    python -m nanolab.train -m experiment=long_tail $(setting "$1") optim.lr="$2" seed="$3" \
        resume=true hydra.sweep.dir="$4" "${extra[@]}" || echo "$4: not every run finished"
}

evaluate() {  # every finished run under the folders given, two at a time, once
    for run in "$@"; do
        [ -f "$run/summary.json" ] || continue
        python - "$run" <<'PY' || echo "$run"
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
try:
    done = json.loads((run / "evaluation_val.json").read_text()).get("step") == max(steps)
except OSError:
    done = False
sys.exit(0 if done else 1)
PY
    done | xargs -r -P 2 -I{} python -m nanolab.evaluate "checkpoint='{}/last.pt'" >/dev/null
}

best_lr() {  # best_lr <report dir> <arm>: the lr of the report's first row, said when at an end
    python - "$1" "${grid[$2]}" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(f"{sys.argv[1]}/report.csv")))
grid = sorted(float(v) for v in sys.argv[2].split(","))
best = float(rows[0]["optim.lr"])
if best in (grid[0], grid[-1]):
    print(f"{sys.argv[1]}: the best lr {best:g} is at an end of {grid}", file=sys.stderr)
print(rows[0]["optim.lr"])
PY
}

for arm in "${arms[@]}"; do
    train "$arm" "${grid[$arm]}" 1337 "$runs/tune/$arm"
done
evaluate "$runs"/tune/*/*/
for arm in "${arms[@]}"; do
    python -m nanolab.compare "$runs/tune/$arm" --evaluated --out "$docs/tune/$arm" >/dev/null
done
declare -A chosen
for arm in "${arms[@]}"; do
    chosen[$arm]=$(best_lr "$docs/tune/$arm" "$arm")
    echo "$arm: lr ${chosen[$arm]}"
done
for arm in "${arms[@]}"; do
    train "$arm" "${chosen[$arm]}" 1338,1339 "$runs/seeds/$arm"
done
evaluate "$runs"/seeds/*/*/

three_seeds() {  # the runs of an arm at its chosen lr: the sweep's seed 1337 and the two seeds
    python - "$runs/tune/$1" "${chosen[$1]}" <<'PY'
import sys, yaml
from pathlib import Path
for run in sorted(Path(sys.argv[1]).iterdir()):
    overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    if f"optim.lr={sys.argv[2]}" in overrides:
        print(run)
PY
    ls -d "$runs/seeds/$1"/*/
}
# shellcheck disable=SC2046
python -m nanolab.compare $(three_seeds sgd) $(three_seeds ce) --evaluated --out "$docs/optimizers"
# shellcheck disable=SC2046
python -m nanolab.compare $(for arm in "${arms[@]:1}"; do three_seeds "$arm"; done) \
    --evaluated --out "$docs/losses"
python -m nanolab.compare "$runs"/tune/*/*/ --evaluated --out "$docs/tune" >/dev/null

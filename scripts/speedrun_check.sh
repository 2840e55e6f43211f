#!/usr/bin/env bash
# The speedrun's record, measured as docs/speedrun.md quotes it: for each seed, back to back on
# this machine, (a) the reference, nanoGPT's CPU quick start run by nanolab
# (experiment=nanogpt_quickstart: 2000 steps, lr 1e-3), and (b) experiment=speedrun_char. Each
# is timed as a whole process (imports, config, reading the data, training, evaluations,
# checkpoints, exit) and its last.pt is scored by nanolab.evaluate on the whole val split.
# Prints both wall times, both val/ce values and the ratio; exits 1 when a seed's speedrun is
# slower than a third of its reference's time (ratio < 3) or scores worse than the reference's
# mean val/ce.
#
#   bash scripts/speedrun_check.sh                 # seeds 1337 1338 1339, about 4 minutes here
#   SEEDS=1337 OUT=/tmp/check bash scripts/speedrun_check.sh
#   OVERRIDES="trainer.max_iters=2" ...   # added to every run: a quick try of the script itself
#   PYTHON=.venv/bin/python ...          # the interpreter (default: python on PATH)
#
# Time nothing else meanwhile: a busy core makes torch steps 10-40x slower. The script warns
# when the CPUs are busy before it starts.
set -euo pipefail

SEEDS=${SEEDS:-"1337 1338 1339"}
PYTHON=${PYTHON:-python}
read -r -a OVERRIDES <<<"${OVERRIDES:-}"
OUT=${OUT:-outputs/speedrun_check/$(date +%Y-%m-%d_%H-%M-%S)}
MIN_RATIO=${MIN_RATIO:-3.0}  # the target; another value only to try the script itself
mkdir -p "$OUT"

# the share of the CPUs busy over one second before the start (Linux's /proc/stat)
busy=$("$PYTHON" - 2>/dev/null <<'EOF' || echo 0
import time
def times():
    values = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    return sum(values), values[3] + values[4]  # all, idle + iowait
(total0, idle0), _, (total1, idle1) = times(), time.sleep(1), times()
print(round(100 * (1 - (idle1 - idle0) / (total1 - total0))))
EOF
)
if [ "$busy" -gt 20 ]; then
  echo "warning: the CPUs were ${busy}% busy before the start; other work slows the runs unevenly" >&2
fi

# run ARM PRESET SEED: train as one timed process, then score last.pt on the whole val split
run() {
  local arm=$1 preset=$2 seed=$3 dir="$OUT/$1-$3"
  local start end
  start=$(date +%s.%N)
  "$PYTHON" -m nanolab.train "experiment=$preset" "seed=$seed" "hydra.run.dir=$dir" \
    ${OVERRIDES[@]+"${OVERRIDES[@]}"} >"$dir.log" 2>&1 || { echo "$arm seed $seed failed: see $dir.log" >&2; exit 1; }
  end=$(date +%s.%N)
  "$PYTHON" -c "print(round($end - $start, 2))" >"$dir.wall_s"
  "$PYTHON" -m nanolab.evaluate "checkpoint=$dir/last.pt" token_freq.bins=0 >>"$dir.log" 2>&1 \
    || { echo "evaluating $dir/last.pt failed: see $dir.log" >&2; exit 1; }
  echo "$arm seed $seed: $(cat "$dir.wall_s") s" >&2
}

# Untimed: prepare the data and compile the modules' bytecode, which a first run on a fresh
# checkout would otherwise pay inside the reference's time.
"$PYTHON" -m nanolab.train experiment=speedrun_char "hydra.run.dir=$OUT/warmup" \
  ${OVERRIDES[@]+"${OVERRIDES[@]}"} trainer.max_iters=1 >"$OUT/warmup.log" 2>&1 || { echo "the warm-up run failed: see $OUT/warmup.log" >&2; exit 1; }

for seed in $SEEDS; do
  run reference nanogpt_quickstart "$seed"
  run speedrun speedrun_char "$seed"
done

"$PYTHON" - "$OUT" "$MIN_RATIO" $SEEDS <<'EOF'
import json, statistics, sys
from pathlib import Path

out, min_ratio, seeds = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]

def result(arm: str, seed: str) -> tuple[float, float]:
    run = out / f"{arm}-{seed}"
    wall = float((out / f"{arm}-{seed}.wall_s").read_text())
    return wall, json.loads((run / "evaluation_val.json").read_text())["ce"]

ref = {s: result("reference", s) for s in seeds}
fast = {s: result("speedrun", s) for s in seeds}
target = statistics.mean(v for _, v in ref.values())
print(f"{'seed':>6} {'reference s':>12} {'val/ce':>8} {'speedrun s':>11} {'val/ce':>8} {'ratio':>6}  verdict")
ok = True
for s in seeds:
    (rw, rv), (fw, fv) = ref[s], fast[s]
    ratio = rw / fw
    passed = ratio >= min_ratio and fv <= target
    ok &= passed
    print(f"{s:>6} {rw:12.1f} {rv:8.4f} {fw:11.1f} {fv:8.4f} {ratio:6.2f}  {'ok' if passed else 'MISSED'}")
mean = lambda d, i: statistics.mean(v[i] for v in d.values())
print(f"{'mean':>6} {mean(ref, 0):12.1f} {target:8.4f} {mean(fast, 0):11.1f} {mean(fast, 1):8.4f} "
      f"{mean(ref, 0) / mean(fast, 0):6.2f}")
print(f"target: each seed's ratio (reference wall time / speedrun wall time, back to back) >= "
      f"{min_ratio} and its speedrun val/ce <= the reference's mean {target:.4f} (whole val split)")
print("all seeds meet it" if ok else "MISSED: at least one seed does not meet it")
sys.exit(0 if ok else 1)
EOF

"""scripts/speedrun_check.sh end to end on tiny runs: it times both arms, scores them on the
whole val split, prints its table and fails the seed the speedrun misses."""

import json
import os
import subprocess
import sys

from conftest import REPO


def test_speedrun_check_times_scores_and_fails_a_miss(tmp_path):
    # two steps of each arm; no speedrun is 1000 times faster, so the seed must be missed
    env = os.environ | {
        "PYTHON": sys.executable,
        "SEEDS": "1337",
        "OUT": str(tmp_path),
        "OVERRIDES": "trainer.max_iters=2 trainer.eval_iters=1",
        "MIN_RATIO": "1000",
    }
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "speedrun_check.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["seed", "reference"], proc.stdout + proc.stderr[-3000:]
    seed, ref_s, ref_ce, fast_s, fast_ce, ratio, verdict = lines[1].split()
    walls = {}
    for arm, wall, ce in (("reference", ref_s, ref_ce), ("speedrun", fast_s, fast_ce)):
        scored = json.loads((tmp_path / f"{arm}-1337" / "evaluation_val.json").read_text())
        assert abs(scored["ce"] - float(ce)) < 1e-4 and scored["tokens"] == 111488
        walls[arm] = float((tmp_path / f"{arm}-1337.wall_s").read_text())
        assert abs(walls[arm] - float(wall)) <= 0.05 and walls[arm] > 0
    assert abs(float(ratio) - walls["reference"] / walls["speedrun"]) <= 0.005
    assert verdict == "MISSED" and proc.returncode == 1
    assert lines[-1] == "MISSED: at least one seed does not meet it"

"""scripts/sparsity_study.sh end to end at 20 steps and one seed: every run trains, every report
is written, the measurements are taken, and the tables quote the reports' numbers."""

import csv
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_the_sparsity_study_runs_every_stage_and_tables_its_reports(tmp_path):
    env = os.environ | {
        "OUT": str(tmp_path),
        "SEEDS": "1337",
        "STEPS": "20",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "sparsity_study.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0 and "failed" not in proc.stdout, proc.stdout + proc.stderr[-3000:]
    for section in (
        "## Unstructured sparsity",
        "## Structured and unstructured",
        "## L1 before magnitude pruning",
        "## Large sparse against small dense",
        "## Memory and time (seed 1337)",
    ):
        assert section in proc.stdout
    with open(tmp_path / "prune" / "gradual90-asis-s1337" / "prune.csv") as f:
        (gradual,) = csv.DictReader(f)
    assert abs(float(gradual["sparsity"]) - 0.9) < 1e-3
    row = next(line for line in proc.stdout.splitlines() if "gradual (Zhu & Gupta) | 0.9 |" in line)
    assert f"| {float(gradual['val/ce']):.3f} |" in row
    with open(tmp_path / "measure" / "dense128" / "prune.csv") as f:
        dense, int8 = list(csv.DictReader(f))[:2]
    assert int8["weights"] == "int8" and float(int8["memory_bytes"]) < float(dense["memory_bytes"])
    assert (tmp_path / "prune" / "dense128-structured-s1337" / "structured-0.5.pt").is_file()

"""scripts/gpu_check.sh --dry-run: every check of the GPU script runs tiny on CPU and writes
its summary."""

import json
import subprocess

from conftest import REPO
from test_gpu_check import ENV


def test_gpu_check_dry_run_runs_every_check_and_writes_its_summary(tmp_path):
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        env=ENV,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["failed"] == [] and report["dry_run"]
    assert set(report["bench"]) == {"ce", "mse", "label_smoothing"} and all(
        b["tokens_per_s"] > 0 for b in report["bench"].values()
    )
    assert report["head"]["vocab_size"] == 50257 and report["head"]["chunked_peak_mb"] > 0
    assert report["kernels"]["attention_kernel"] != "unknown"
    assert (
        report["torchrun"]["first_segment"]["status"] == "interrupted"
        and report["torchrun"]["status"] == "finished"
    )
    assert report["quickstart"]["status"] == "finished"
    rows = report["sparsity"]["rows"]
    assert [(r["amount"], r["weights"]) for r in rows] == [
        (0, "float32"),
        (0, "int8"),
        (0.5, "float32"),
        (0.5, "int8"),
    ]
    assert rows[1]["memory_bytes"] < rows[0]["memory_bytes"] and rows[2]["forward_ms"] > 0
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check (dry run on CPU)")

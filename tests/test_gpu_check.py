"""scripts/gpu_check.sh, which measures the GPU paths when a GPU is lent, runs end to end here:
its --dry-run takes every check through the same code on a tiny CPU model."""

import os
import subprocess
import sys

from conftest import REPO

# the script's interpreter: this one, whatever PATH says
ENV = os.environ | {"PYTHON": sys.executable}


def test_gpu_check_without_a_gpu_says_so():
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "/tmp/nanolab_gpu_check_unused"],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    assert proc.returncode == 2 and "--dry-run" in proc.stderr

"""The chunked-head benchmark in float16 and bfloat16 runs on CPU and reports success."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_head_benchmark_in_half_precision_runs_on_cpu(tmp_path, dtype):
    # torch's CPU kernels cover both half-precision types (torch >= 2.4, the project's floor).
    proc = run_cli(
        f"dtype={dtype}",
        "bench.what=head",
        "bench.repeats=1",
        "bench.head.tokens=512",
        "bench.head.n_embd=32",
        "bench.head.vocab_size=8192",
        "bench.head.chunk_tokens=128",
        "device=cpu",
        f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
        module="nanolab.bench",
        check=False,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in text, text
    assert json.loads((tmp_path / "bench.json").read_text())["dtype"] == dtype

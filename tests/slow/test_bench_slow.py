"""nanolab.bench end to end: the step, head, profile and token_freq benchmarks write what they
print."""

import json

import pytest
from conftest import TINY, run_cli


def bench(tmp_path, *overrides: str):
    """Run `python -m nanolab.bench <overrides>` into tmp_path: its bench.json and the process."""
    proc = run_cli(*overrides, f"hydra.run.dir={tmp_path}", cwd=tmp_path, module="nanolab.bench")
    return json.loads((tmp_path / "bench.json").read_text()), proc


def test_step_benchmark_measures_bare_loop_split_and_eval(tmp_path):
    result, out = bench(
        tmp_path,
        *TINY,
        "bench.steps=4",
        "bench.warmup=2",
        "bench.repeats=2",
    )
    assert result["what"] == "step" and result["samples"] == {"bare": 8, "loop": 8, "split": 8}
    assert set(result["split_ms"]) == {"data", "forward", "backward", "optimizer"}
    assert result["bare_ms"] > 0 and result["loop_ms"] > 0 and 0 < result["mfu"] < 1
    assert 0 < result["eval_share"] < 1 and result["peak_memory_mb"] > 0
    assert "loop_overhead" in out.stdout and "mfu" in out.stdout


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_head_benchmark_compares_whole_and_chunked_heads(tmp_path, loss):
    result, _ = bench(
        tmp_path,
        f"loss={loss}",
        "bench.what=head",
        "bench.repeats=1",
        "bench.head.tokens=2048",
        "bench.head.n_embd=64",
        "bench.head.vocab_size=16384",
        "bench.head.chunk_tokens=256",
    )
    assert result["chunk_tokens"] == 256 and result["loss"] == loss
    # 2048 x 16384 float32 logits are 128 MiB, a chunk 16 MiB: the chunked head must need less.
    assert result["chunked_peak_mb"] < result["whole_peak_mb"]
    assert result["grad_rel_diff_hidden"] < 1e-5 and result["grad_rel_diff_weight"] < 1e-5


def test_profile_splits_step_time_by_operator_family(tmp_path):
    result, _ = bench(
        tmp_path,
        *TINY,
        "bench.what=profile",
        "bench.steps=3",
        "bench.warmup=1",
    )
    assert sum(result["share"].values()) == pytest.approx(1.0)
    assert {"matmul", "optimizer", "attention"} <= set(result["self_ms_per_step"])
    assert "aten::mm" in (tmp_path / "profile.txt").read_text()


def test_token_freq_benchmark_times_evaluations_with_and_without_bins(tmp_path):
    result, _ = bench(
        tmp_path,
        *TINY,
        "bench.what=token_freq",
        "bench.warmup=2",
        "bench.repeats=2",
    )
    assert result["bins"] >= 2 and result["samples"] == 2
    assert result["eval_s"] > 0 and result["eval_with_bins_s"] > 0
    assert 0 < result["step_ms"] and -1 < result["run_overhead"] < 1

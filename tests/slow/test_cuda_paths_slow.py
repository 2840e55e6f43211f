"""The compiled paths a first GPU run takes, on CPU: the compiling step is left out of the
first timing; the compiled chunked loss equals the eager one."""

from __future__ import annotations

import json

import pytest
from test_cuda_paths import _chunked_head_run, run_in_process


def test_12_the_compiling_step_is_left_out_of_the_first_timing(tmp_path):
    run_in_process(tmp_path, "compile=true", "trainer.max_iters=3", "trainer.eval_interval=3")
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    timed = {r["step"]: "perf/step_ms" in r for r in logged if "train/loss" in r}
    assert timed == {1: False, 2: True, 3: True}


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_8_compiled_chunk_loss_equals_eager_in_value_and_gradients(loss):
    eager, compiled = _chunked_head_run(False, loss), _chunked_head_run(True, loss)
    for e, c in zip(eager, compiled):
        assert (c - e).abs().max() <= 1e-5 * e.abs().max()

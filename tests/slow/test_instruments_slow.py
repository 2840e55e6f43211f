"""An early-stopped job does not fail its sweep."""

from __future__ import annotations

from conftest import TINY, run_cli


def test_an_early_stopped_job_does_not_fail_its_sweep(tmp_path):
    proc = run_cli(
        "-m",
        *TINY,
        "logger=none",
        "trainer.max_iters=20",
        "trainer.eval_interval=5",
        "trainer.early_stop.patience=1",
        "trainer.early_stop.min_delta=10",
        "seed=1,2",
        f"hydra.sweep.dir={tmp_path}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0 and (proc.stdout + proc.stderr).count(": early_stopped") == 2

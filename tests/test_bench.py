"""nanolab.bench runs for any config and writes what it prints: the numbers are measured, so
only their presence and sanity are checked here (the speed targets live in docs/benchmarks.md)."""

from conftest import run_cli


def test_bad_bench_settings_are_named(tmp_path):
    out = run_cli(
        "bench.what=everything",
        f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
        module="nanolab.bench",
        check=False,
    )
    assert (
        out.returncode == 2
        and "bench.what='everything' is not one of step, compile, head" in out.stdout + out.stderr
    )
    out = run_cli(
        "bench.steps=15",
        f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
        module="nanolab.bench",
        check=False,
    )
    assert out.returncode == 2 and "multiples of trainer.log_interval=10" in out.stdout + out.stderr

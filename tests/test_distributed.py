"""DDP under torchrun on CPU (gloo, 2 processes): gradient averaging is right (two processes
train exactly as one process accumulating two micro-batches), one process writes, resume works."""

import pytest

from nanolab import ConfigError
from nanolab.distributed import World, local_grad_accum


def test_global_batch_is_split_over_processes_or_grows():
    assert local_grad_accum(8, True, World(rank=1, size=4)) == 2
    assert local_grad_accum(8, False, World(rank=1, size=4)) == 8
    with pytest.raises(ConfigError, match=r"trainer.grad_accum=2 cannot be split over 4 processes"):
        local_grad_accum(2, True, World(size=4))


def test_launch_time_is_one_time_for_all_processes_of_a_launch(monkeypatch):
    import time

    from nanolab.launch import launch_time

    monkeypatch.setenv("NANOLAB_LAUNCH_TIME", "1700000000")  # several nodes: exported before srun
    assert launch_time("%Y-%m-%d %H:%M") == time.strftime(
        "%Y-%m-%d %H:%M", time.localtime(1700000000)
    )
    monkeypatch.setenv("NANOLAB_LAUNCH_TIME", "yesterday")
    with pytest.raises(ValueError, match="NANOLAB_LAUNCH_TIME='yesterday' must be Unix seconds"):
        launch_time("%H")
    monkeypatch.delenv("NANOLAB_LAUNCH_TIME")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")  # under torchrun: the launcher's start time
    first = launch_time("%Y-%m-%d %H:%M:%S")
    time.sleep(1.1)
    assert launch_time("%Y-%m-%d %H:%M:%S") == first <= time.strftime("%Y-%m-%d %H:%M:%S")

"""Run nanolab-train, but SIGKILL this process halfway through its Nth checkpoint write.

    python tests/slow/kill_driver.py N [overrides...]

The checkpoint is fully written to its temporary file, cut to half its size, and then the
process kills itself: exactly what a preemption in the middle of torch.save leaves behind.
"""

import os
import signal
import sys

import torch

kill_on_save = int(sys.argv[1])
real_save = torch.save
saves = 0


def save_then_die_midway(obj, f, *args, **kwargs):
    global saves
    saves += 1
    real_save(obj, f, *args, **kwargs)
    if saves == kill_on_save:
        os.truncate(f, os.path.getsize(f) // 2)
        os.kill(os.getpid(), signal.SIGKILL)


torch.save = save_then_die_midway
sys.argv = ["nanolab-train", *sys.argv[2:]]
from nanolab.train import main  # noqa: E402

main()

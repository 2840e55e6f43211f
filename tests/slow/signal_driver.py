"""Run nanolab-train, but send this process SIGTERM N times from inside each checkpoint write:
signals that arrive while the stop checkpoint is being saved.

    python tests/slow/signal_driver.py N [overrides...]
"""

import os
import signal
import sys

import torch

signals_during_save = int(sys.argv[1])
real_save = torch.save


def save_under_signals(obj, f, *args, **kwargs):
    for _ in range(signals_during_save):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, inside the save
    real_save(obj, f, *args, **kwargs)


torch.save = save_under_signals
sys.argv = ["nanolab-train", *sys.argv[2:]]
from nanolab.train import main  # noqa: E402

main()

"""Train a GPT with the loss, model, data and optimizer chosen in the Hydra config.

    python -m nanolab.train                       # nano model, shakespeare_char, cross-entropy
    python -m nanolab.train loss=mse optim.lr=3e-3
    python -m nanolab.train -m loss=ce,mse,label_smoothing

Every run writes metrics.jsonl, summary.json and checkpoints (last.pt, best.pt) to its Hydra
output directory, and logs to W&B (offline when no API key is available). The loop itself is
nanolab.trainer; this module turns its outcome into exit codes.
"""

from __future__ import annotations

import logging
import math
import signal
import sys

import hydra
from omegaconf import DictConfig

from nanolab import EXIT_CONFIG_ERROR, ConfigError, Diverged, Interrupted
from nanolab.tracking import hydra_run_info, record_failure
from nanolab.trainer import requeue_signal, train

log = logging.getLogger("nanolab.train")

# A single run exits with these; a multirun job records its failure instead and lets the others run.
EXIT_DIVERGED = 3


@hydra.main(version_base="1.3", config_path="pkg://nanolab.configs", config_name="train")
def main(cfg: DictConfig) -> float:
    info = hydra_run_info(cfg)
    try:
        return train(cfg, info)
    except Interrupted as e:
        log.warning("%s", e)
        handler = signal.getsignal(e.signum)
        if e.signum == requeue_signal() and callable(handler):
            handler(e.signum, None)  # submitit's: requeue the job (it resumes from last.pt) and exit
        sys.exit(128 + e.signum)  # the machine is going away: stop a whole sweep too
    except KeyboardInterrupt as e:  # a third signal, or Ctrl-C before training started
        log.warning("%s", e or "interrupted")
        sys.exit(128 + signal.SIGINT)
    except (ConfigError, Diverged) as e:
        log.error("%s", e)
        if not info.multirun:
            sys.exit(EXIT_CONFIG_ERROR if isinstance(e, ConfigError) else EXIT_DIVERGED)
        record_failure(info.dir, e)
    except Exception as e:
        if not info.multirun:
            raise
        log.exception("job failed")
        record_failure(info.dir, e)
    return math.nan


__all__ = ["main", "train"]

if __name__ == "__main__":
    # The function of the imported module, not __main__'s: launchers that pickle the task
    # (joblib, submitit) then refer to nanolab.train.main by name instead of copying its globals.
    from nanolab.train import main as importable_main

    importable_main()

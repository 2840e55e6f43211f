"""Train a GPT with the loss, model, data and optimizer chosen in the Hydra config.

    python -m nanolab.train                       # nano model, shakespeare_char, cross-entropy
    python -m nanolab.train loss=mse optim.lr=3e-3
    python -m nanolab.train -m loss=ce,mse,label_smoothing

Every run writes metrics.jsonl, summary.json and checkpoints (last.pt, best.pt) to its Hydra
output directory, and logs to W&B (offline when no API key is available). The loop itself is
nanolab.trainer; this module turns its outcome into exit codes.
"""

from __future__ import annotations

import gc
import logging
import math
import signal
import sys

import hydra
from omegaconf import DictConfig

from nanolab import EXIT_CONFIG_ERROR, ConfigError, Diverged, Interrupted, StorageError
from nanolab.launch import (
    RunInfo,
    claim_run_dir,
    hydra_run_info,
    record_refusal,
    release,
    requeue_signal,
)
from nanolab.tracking import record_failure
from nanolab.trainer import train

log = logging.getLogger("nanolab.train")

# A single run exits with these; a multirun job records its failure instead and lets the others run.
EXIT_DIVERGED = 3


@hydra.main(version_base="1.3", config_path="pkg://nanolab.configs", config_name="train")
def main(cfg: DictConfig) -> float:
    info = hydra_run_info(cfg)
    if not info.multirun:  # the run callback claimed the run directory before Hydra wrote to it
        return run_and_report(cfg, info)
    # A sweep job claims its directory as a single run does: a relaunched sweep without
    # resume=true, or a second sweep into the same directory, must not overwrite a run.
    try:
        claim = claim_run_dir(info.dir, cfg.resume, key="hydra.sweep.dir")
    except ConfigError as e:
        log.error("%s", e)
        record_refusal(info.dir, e)
        return math.nan
    try:
        return run_and_report(cfg, info)
    finally:
        release(claim)


def run_and_report(cfg: DictConfig, info: RunInfo) -> float:
    """Train, and turn how training ended into the exit code; a multirun job records its
    failure in its directory instead and lets the other jobs run."""
    try:
        return train(cfg, info)
    except Interrupted as e:
        log.warning("%s", e)
        handler = signal.getsignal(e.signum)
        if e.signum == requeue_signal() and callable(handler):
            # submitit's: requeue the job (it resumes from last.pt) and exit
            handler(e.signum, None)
        sys.exit(128 + e.signum)  # the machine is going away: stop a whole sweep too
    except KeyboardInterrupt as e:  # a third signal, or Ctrl-C before training started
        log.warning("%s", e or "interrupted")
        sys.exit(128 + signal.SIGINT)
    except (ConfigError, Diverged, StorageError) as e:
        log.error("%s", e)
        if not info.multirun:
            sys.exit(
                EXIT_CONFIG_ERROR
                if isinstance(e, ConfigError)
                else EXIT_DIVERGED
                if isinstance(e, Diverged)
                else 1
            )
        record_failure(info.dir, e)
    except Exception as e:
        if not info.multirun:
            raise
        log.exception("job failed")
        record_failure(info.dir, e)
    return math.nan


def cli() -> None:
    """The command line (`python -m nanolab.train`, `nanolab-train`): main, then a quick exit."""
    main()
    # At exit Python's last garbage collection walks every object still alive, torch's compiler
    # modules among them: 0.45 s of a 3.4 s one-step run (docs/benchmarks.md). Frozen objects are
    # skipped. Everything is written and closed by now; atexit hooks (logging, W&B) still run.
    gc.freeze()


__all__ = ["cli", "main", "train"]

if __name__ == "__main__":
    # The function of the imported module, not __main__'s: launchers that pickle the task
    # (joblib, submitit) then refer to nanolab.train.main by name instead of copying its globals.
    from nanolab.train import cli

    cli()

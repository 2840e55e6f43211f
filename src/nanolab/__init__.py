"""nanolab: train nanoGPT-style models and compare training choices honestly."""

import contextlib
import logging
import sys
from typing import Iterator

EXIT_CONFIG_ERROR = 2  # bad input, reported in one line before any work
ENDED_AS_PLANNED = ("finished", "early_stopped")  # run statuses whose last evaluation is final


class ConfigError(ValueError):
    """Bad input (a config value, a data file, a checkpoint). The message names the key or the
    file and what to change; entry points print it without a traceback."""


@contextlib.contextmanager
def exit_on_config_error(log: logging.Logger) -> Iterator[None]:
    """For command-line entry points: a ConfigError becomes one logged line and exit code 2."""
    try:
        yield
    except ConfigError as e:
        log.error("%s", e)
        sys.exit(EXIT_CONFIG_ERROR)


class Diverged(RuntimeError):
    """The loss or the gradient norm became non-finite and `trainer.on_nonfinite=stop`."""


class Interrupted(RuntimeError):
    """SIGTERM or SIGINT arrived; a checkpoint of the current step was saved first."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}; resume with resume=true")
        self.signum = signum

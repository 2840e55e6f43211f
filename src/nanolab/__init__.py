"""nanolab: train nanoGPT-style models and compare training choices honestly."""

import contextlib
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

EXIT_CONFIG_ERROR = 2  # bad input, reported in one line before any work
ENDED_AS_PLANNED = ("finished", "early_stopped")  # run statuses whose last evaluation is final


class ConfigError(ValueError):
    """Bad input (a config value, a data file, a checkpoint). The message names the key or the
    file and what to change; entry points print it without a traceback."""


@contextlib.contextmanager
def exit_on_config_error(log: logging.Logger) -> Iterator[None]:
    """For command-line entry points: a ConfigError becomes one logged line and exit code 2, a
    StorageError (a file that could not be written) one line and exit code 1."""
    try:
        yield
    except ConfigError as e:
        log.error("%s", e)
        sys.exit(EXIT_CONFIG_ERROR)
    except StorageError as e:
        log.error("%s", e)
        sys.exit(1)


class DataError(ConfigError):
    """Input data that cannot be used; the message names the file or key and the fix."""


class Diverged(RuntimeError):
    """The loss or the gradient norm became non-finite and `trainer.on_nonfinite=stop`."""


class Abandoned(RuntimeError):
    """A measurement (an evaluation, a sharpness estimate) gave up at a batch because a stop
    was requested: the stop checkpoint must not wait for it."""


class StorageError(RuntimeError):
    """A file of the run could not be written (a full disk, say); the message names it."""


class Interrupted(RuntimeError):
    """SIGTERM or SIGINT arrived; a checkpoint of the current step was saved first."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}; resume with resume=true")
        self.signum = signum


def config_as_data(tree: Any, references: bool = False) -> Any:
    """A config tree read from a file written elsewhere (a checkpoint, a downloaded sweep's
    .hydra/config.yaml), made safe to hand to OmegaConf: every interpolation is escaped, so
    each value reads back as the text written and resolving never reads the environment, the
    clock or a file. With `references`, a string that only refers to other keys
    (`${tuned_lr.${loss.name}}`: no resolver call, which needs a colon, and no backslash) still
    resolves."""
    if isinstance(tree, dict):
        return {k: config_as_data(v, references) for k, v in tree.items()}
    if isinstance(tree, list):
        return [config_as_data(v, references) for v in tree]
    if (
        not isinstance(tree, str)
        or "${" not in tree
        or (references and ":" not in tree and "\\" not in tree)
    ):
        return tree
    # n backslashes before ${ become 2n (n literal ones) and one more escapes the ${ itself.
    return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", tree)

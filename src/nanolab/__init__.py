"""nanolab: train nanoGPT-style models and compare training choices honestly."""


class ConfigError(ValueError):
    """Bad input (a config value, a data file, a checkpoint). The message names the key or the
    file and what to change; entry points print it without a traceback."""


class Diverged(RuntimeError):
    """The loss or the gradient norm became non-finite and `trainer.on_nonfinite=stop`."""


class Interrupted(RuntimeError):
    """SIGTERM or SIGINT arrived; a checkpoint of the current step was saved first."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}; resume with resume=true")
        self.signum = signum

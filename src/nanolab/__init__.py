"""nanolab: train nanoGPT-style models and compare training choices honestly."""


class ConfigError(ValueError):
    """Bad input (a config value, a data file, a checkpoint). The message names the key or the
    file and what to change; entry points print it without a traceback."""

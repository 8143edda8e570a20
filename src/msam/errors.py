"""The error types a user sees as a single line instead of a traceback."""


class ConfigError(ValueError):
    """Bad user input (config values, missing data): reported as one line, exit code 2."""


class RunError(RuntimeError):
    """A run that cannot go on (non-finite values, a full disk, a run directory in use, a
    checkpoint from another config): reported as one line, exit code 1; what was written before
    stays intact."""

"""The one error type a user sees as a single line instead of a traceback."""


class ConfigError(ValueError):
    """Bad user input (config values, missing data): reported as one line, exit code 2."""

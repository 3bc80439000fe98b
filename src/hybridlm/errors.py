"""The library's error types, in a leaf module every layer may import (nothing here imports hybridlm).

Library code raises these with a one-line message; the CLI prints it and exits 2 (cli/__init__.py).
"""


class ConfigError(ValueError):
    """An invalid configuration value or an unknown field (the message names the nearest valid one)."""


class PatternError(ValueError):
    """A malformed layer pattern; the message names the column and the character."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: missing, corrupt, or not matching its config."""


class MissingHookError(NotImplementedError):
    """A registered mixer lacks a hook the caller needs (the message names the class and the hook)."""

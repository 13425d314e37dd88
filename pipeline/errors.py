"""One error root for everything tilewise raises on purpose.

Each class mixes in the builtin it specialises, so callers that already catch ``ValueError`` or
``OSError`` keep working, while the CLI can map each family to its own exit code and one-line message.
"""

from __future__ import annotations


class TilewiseError(Exception):
    """Root of all deliberate tilewise errors."""

    exit_code = 1

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class InputError(TilewiseError, ValueError):
    """The input scene cannot be used (wrong shape, bands, dimensionality, empty...)."""

    exit_code = 3


class FormatError(TilewiseError, ValueError):
    """A file is corrupt, truncated or not the format its name claims."""

    exit_code = 4


class BundleError(TilewiseError, ValueError):
    """A model bundle is missing, malformed or inconsistent."""

    exit_code = 5


class ConfigError(TilewiseError, ValueError):
    """A job configuration or option combination is invalid."""

    exit_code = 2


class OutputError(TilewiseError, OSError):
    """An output cannot be written (exists, read-only, disk full, outside the output root)."""

    exit_code = 6


class ExecutionError(TilewiseError, RuntimeError):
    """A block or worker failed in a way retries could not fix."""

    exit_code = 7

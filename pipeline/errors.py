"""One error root for everything tilewise raises on purpose.

Each class mixes in the builtin it specialises, so callers that already catch ``ValueError`` or
``OSError`` keep working, while the CLI can map each family to its own exit code and one-line message.
"""

from __future__ import annotations

import os
import re

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
_SIGNED = re.compile(
    r"(?i)\b((?:X-Amz-(?:Credential|Signature|Security-Token)|X-Goog-(?:Credential|Signature)|sig|token)=)"
    r"[^&\s\"']+"
)
_SECRET_VARS = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECURITY_TOKEN",
    "PREFECT_API_AUTH_STRING",  # user:password of a Prefect server protected by its auth string
    "PREFECT_API_KEY",
)


def redact(text: str) -> str:
    """``text`` without credentials: URL user-info, presigned-URL signatures and tokens, and the values
    of this process's AWS and Prefect credential variables. Messages and reports go through it."""
    text = _USERINFO.sub(r"\1***@", text)
    text = _SIGNED.sub(r"\1***", text)
    for var in _SECRET_VARS:
        value = os.environ.get(var, "")
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text


class TilewiseError(Exception):
    """Root of all deliberate tilewise errors. The message is redacted (see ``redact``)."""

    exit_code = 1

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(redact(f"{path}: {message}" if path else message))


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

"""Why a local path a reader was given cannot be opened, in words a user can act on."""

from __future__ import annotations

import errno
import os


def missing_reason(path: str, default: str = "no such file") -> str:
    """``symbolic link loop``, ``broken symbolic link (to X)``, or ``default`` for a plain absence."""
    if os.path.islink(path):
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "symbolic link loop"
            return f"broken symbolic link (to {os.readlink(path)})"
    return default

"""Final files appear only by atomic rename, so a half-written output never sits at its final path."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import OutputError

TEMP_MARK = ".tw-tmp-"


def temp_sibling(dest: Path) -> Path:
    """A unique name beside ``dest`` (same filesystem, so the final rename is atomic)."""
    return dest.with_name(f"{dest.name}{TEMP_MARK}{uuid.uuid4().hex[:8]}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(dest: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write (file or directory); rename it to ``dest`` on success.

    On any exception the temporary is removed and ``dest`` is left untouched.
    """
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise OutputError("exists; pass --overwrite to replace it", path=str(dest))
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create folder: {exc.strerror or exc}", path=str(dest.parent)) from exc
    tmp = temp_sibling(dest)
    try:
        yield tmp
        if dest.exists() and dest.is_dir() and not dest.is_symlink():
            old = temp_sibling(dest)
            os.replace(dest, old)
            os.replace(tmp, dest)
            _remove(old)
        else:
            os.replace(tmp, dest)
    except OSError as exc:
        _remove(tmp)
        raise OutputError(f"cannot write: {exc.strerror or exc}", path=str(dest)) from exc
    except BaseException:
        _remove(tmp)
        raise


def clean_stale_temps(folder: str | os.PathLike[str], *, keep: tuple[str, ...] = ()) -> int:
    """Remove temporaries left by a crashed run anywhere under ``folder`` (outputs mirror the input's
    subfolders, so a crash can leave one deep down); returns how many were removed. Folders named in
    ``keep`` (resumable work) and Zarr stores are not walked into."""
    root = Path(folder)
    if not root.is_dir():
        return 0
    stale: list[Path] = []
    for parent, dirs, files in os.walk(root):
        stale += [Path(parent, name) for name in dirs + files if TEMP_MARK in name]
        dirs[:] = [d for d in dirs if TEMP_MARK not in d and d not in keep and not d.endswith(".zarr")]
    for p in stale:
        _remove(p)
    return len(stale)

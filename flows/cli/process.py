"""The two costs of a short ``tilewise run`` that are not its work: the cycle collector during start-up,
and the interpreter's teardown at the end.

Start-up: importing torch creates millions of objects that live as long as the process. The cycle
collector's full passes scan them all, during the import and whenever a later import (pystac, zarr)
fills the oldest generation: 4 full passes, 1–2 s of the S2 demo on this shared machine.
``settled_start`` keeps the collector off while the job's modules load, then freezes what they made
(``gc.freeze``: never scanned again, never freed) and turns the collector back on, so the job's own
garbage is collected as before. The price is the few cycles the imports left unreachable.

End: destroying every module, then torch's operator registry and GDAL's drivers in C++ destructors,
took 1–2 s after the summary was printed. Once a plain run has printed its summary (its files were
all renamed into place, its thread pools are idle), ``end_now_if_allowed`` does what still matters (atexit
handlers: temporary folders, logging; flushing stdout and stderr) and leaves with ``os._exit``. Only
the process's own entry point (``tilewise``, ``python -m flows.cli``) ends this way: a command invoked
in-process, as tests do, returns as usual, and so does a process under a profiler, coverage or a
debugger, which report at teardown.

Imports a plain run does not need (``lean_start``, only in a process the command owns): rasterio
imports boto3 (0.2 s) only to build AWS sessions, which it does for ``s3://`` paths and for AWS keys
in the environment; tilewise hands GDAL ``/vsis3/`` paths, so without the keys boto3 is never used.
And torch, zarr, numcodecs and fsspec each scan every installed distribution's entry points while
they load (260 distributions here, 65-80 ms a scan): one scan serves them all.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib.metadata
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

_quick_end = False
_owned = False


@contextlib.contextmanager
def settled_start() -> Iterator[Callable[[], None]]:
    """No cycle collection until the body calls the ``settle`` it is given (once the job's modules
    are loaded): that freezes what exists and turns the collector back on. Leaving the block gives
    the frozen objects back (``gc.unfreeze``), which matters when a command runs in-process."""
    was_on = gc.isenabled()
    gc.disable()

    def settle() -> None:
        gc.freeze()
        if was_on:
            gc.enable()

    try:
        yield settle
    finally:
        gc.unfreeze()
        if was_on:
            gc.enable()


def own_process() -> None:
    """Called by the entry point: the process runs this one command and ends with it."""
    global _owned
    _owned = True


def lean_start() -> None:
    """In a process the command owns, load the job's libraries without what a plain run never uses
    (see the module docstring); in-process (tests, ``CliRunner``) it changes nothing."""
    if not _owned:
        return
    _one_entry_point_scan()
    _rasterio_without_boto3()


def _one_entry_point_scan() -> None:
    """``importlib.metadata.entry_points`` answers from one scan of the installed distributions: no
    package is installed while the command runs, so every later scan would read the same files."""
    metadata = importlib.metadata
    scan = metadata.entry_points
    if getattr(scan, "tilewise_once", False):
        return
    every = scan()

    def entry_points(**params: Any) -> Any:
        return every.select(**params) if params else every

    entry_points.tilewise_once = True  # type: ignore[attr-defined]
    metadata.entry_points = entry_points  # type: ignore[assignment]


def _rasterio_without_boto3() -> None:
    """Import rasterio as if boto3 were not installed, unless something already loaded either or AWS
    keys are in the environment (the one case where rasterio builds a boto3 session for a
    ``/vsis3/`` path: ``rasterio.Env``'s ``Session.from_environ``)."""
    if "rasterio" in sys.modules or "boto3" in sys.modules:
        return
    if "AWS_ACCESS_KEY_ID" in os.environ and "AWS_SECRET_ACCESS_KEY" in os.environ:
        return
    sys.modules["boto3"] = None  # type: ignore[assignment]  # ``import boto3`` raises ImportError
    try:
        import rasterio.session  # noqa: F401
    except ImportError:  # no GDAL here: a scene that needs it says so when it opens
        pass
    finally:
        del sys.modules["boto3"]


def allow_quick_end() -> None:
    """The command has finished and reported: the process may skip the interpreter's teardown."""
    global _quick_end
    _quick_end = True


def forbid_quick_end() -> None:
    """The default: the interpreter tears down as usual."""
    global _quick_end
    _quick_end = False


def end_now_if_allowed(code: int | str | None) -> None:
    """Called by the entry point with the command's exit code; ends the process now when allowed."""
    global _quick_end
    if not _quick_end or sys.getprofile() is not None or sys.gettrace() is not None:
        return  # under a profiler, coverage or a debugger, which report at teardown
    _quick_end = False
    atexit._run_exitfuncs()  # temporary folders (weakref.finalize), logging.shutdown, ...
    if isinstance(code, str):  # as the interpreter would: the message on stderr, status 1
        sys.stderr.write(code + "\n")
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing left to say
            stream.flush()
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))

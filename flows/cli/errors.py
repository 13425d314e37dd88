"""The one way a ``tilewise`` command reports a TilewiseError.

A user error prints one redacted line ``error: ...`` on stderr and exits with its family's code, so
scripts can branch on it. With ``--debug`` the error propagates, so the traceback shows. The flag lives
in the typer context's ``meta`` (shared by every nested command), so a sub-app invoked on its own, as
tests do, simply runs without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

from pipeline.errors import TilewiseError, redact

_DEBUG = "tilewise.debug"


def set_debug(ctx: typer.Context, debug: bool) -> None:
    """Record ``--debug`` for every command below ``ctx``."""
    ctx.meta[_DEBUG] = debug


def debug_enabled(ctx: typer.Context) -> bool:
    return bool(ctx.meta.get(_DEBUG, False))


def print_error(exc: TilewiseError) -> None:
    """One line on stderr; the message is plain text (a ``[`` in a path is not rich markup)."""
    line = Text.assemble(("error:", "red"), " ", redact(str(exc)))
    Console(stderr=True).print(line, highlight=False, soft_wrap=True)


def fail(ctx: typer.Context, exc: TilewiseError) -> NoReturn:
    """Report ``exc`` as the CLI does (or re-raise it under ``--debug``)."""
    if debug_enabled(ctx):
        raise exc
    print_error(exc)
    raise typer.Exit(exc.exit_code) from None


@contextmanager
def reported(ctx: typer.Context) -> Iterator[None]:
    """Wrap a command body: any TilewiseError inside is reported by ``fail``."""
    try:
        yield
    except TilewiseError as exc:
        fail(ctx, exc)

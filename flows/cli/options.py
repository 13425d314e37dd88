"""Option parsing shared by the commands, so ``--patch-size 64x64`` means the same everywhere."""

from __future__ import annotations

import re
from enum import StrEnum

import typer

_INTS = re.compile(r"\s*-?\d+(?:\s*[,x]\s*-?\d+)*\s*")


class Arch(StrEnum):
    """Networks a bundle can be made or trained with."""

    unet = "unet"
    fcn = "fcn"


def int_list(text: str | None, option: str, *, positive: bool = False) -> list[int] | None:
    """``"96,96,96"`` or ``"96x96x96"`` as integers (None when the option was not given). Every piece
    must be a number: ``"4,x"`` is refused, not read as ``[4]``."""
    if text is None:
        return None
    if not _INTS.fullmatch(text):
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint=option)
    values = [int(v) for v in re.split(r"[,x]", text)]
    if positive and any(v < 1 for v in values):
        raise typer.BadParameter(f"expected positive integers, got {text!r}", param_hint=option)
    return values

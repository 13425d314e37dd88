"""Option parsing shared by the commands, so ``--patch-size 64x64`` means the same everywhere."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

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


def band_map(text: str | None, option: str = "--bands") -> dict[str, str] | None:
    """``"B04=red,B08=nir"`` as {channel: asset or band name} (None when the option was not given)."""
    if text is None:
        return None
    pairs = [p.strip() for p in text.split(",") if p.strip()]
    parsed = [p.split("=", 1) for p in pairs]
    if not parsed or any(len(kv) != 2 or not kv[0].strip() or not kv[1].strip() for kv in parsed):
        raise typer.BadParameter(
            f"expected CHANNEL=ASSET[,CHANNEL=ASSET...], got {text!r}", param_hint=option
        )
    return {k.strip(): v.strip() for k, v in parsed}


def model_options(
    folds: str | None,
    checkpoint: str | None,
    mirroring: bool | None,
    *,
    trust_code: bool = False,
    accumulate: str | None = None,
) -> dict[str, Any] | None:
    """The options of a model kind (nnU-Net's ``--folds 0,1 --checkpoint best --no-mirroring``, a MONAI
    bundle's ``--trust-code``) as the job's ``model_options``; None when none was given, so a config
    file's stay."""
    opts: dict[str, Any] = {"trust_code": True} if trust_code else {}
    if folds is not None:
        parts = [p.strip() for p in folds.split(",") if p.strip()]
        if not parts or not all(p.isdigit() or p == "all" for p in parts):
            raise typer.BadParameter(
                f"expected fold numbers like 0,1,2 (or all), got {folds!r}", param_hint="--folds"
            )
        opts["folds"] = [int(p) if p.isdigit() else p for p in parts]
    if checkpoint is not None:
        if checkpoint not in ("final", "best"):
            raise typer.BadParameter(f"expected final or best, got {checkpoint!r}", param_hint="--checkpoint")
        opts["checkpoint"] = checkpoint
    if mirroring is not None:
        opts["mirroring"] = mirroring
    if accumulate is not None:
        if accumulate not in ("nnunet", "float32"):
            raise typer.BadParameter(
                f"expected nnunet or float32, got {accumulate!r}", param_hint="--accumulate"
            )
        opts["accumulate"] = accumulate
    return opts or None

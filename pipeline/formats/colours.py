"""Class colours: one parser and one default rule for the bundle, every label writer and the quicklook.

A class keeps the colour it was given. One without gets ``default_color(index)``: Tableau 10 for the
first ten (told apart more easily, colour-blind readers included, than primaries), then golden-ratio
hues, so any number of classes stay distinct and a class keeps its colour whatever the class count.
Writers leave class 0 transparent when it has no colour of its own: by convention it is the background,
and a viewer overlaying the labels should show the image through it.
"""

from __future__ import annotations

import colorsys
import re
from collections.abc import Sequence
from typing import Any

from pipeline.errors import ConfigError

RGBA = tuple[int, int, int, int]

TABLEAU_10 = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
_GOLDEN = 0.618033988749895
_BARE_HEX = re.compile(r"^[0-9a-fA-F]{6}(?:[0-9a-fA-F]{2})?$")
TRANSPARENT: RGBA = (0, 0, 0, 0)
UNUSED: RGBA = (0, 0, 0, 255)  # palette entries no class uses


def default_color(index: int) -> str:
    """The ``#rrggbb`` colour of class ``index`` when none is given."""
    if index < 0:
        raise ConfigError(f"class index must be >= 0, not {index}")
    if index < len(TABLEAU_10):
        return TABLEAU_10[index]
    r, g, b = colorsys.hsv_to_rgb((index * _GOLDEN) % 1.0, 0.65, 0.9)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def parse_color(color: Any, *, index: int = 0) -> RGBA:
    """A colour as RGBA 0..255: ``#rrggbb[aa]`` (``#`` optional), ``#rgb``, a CSS name (``"teal"``), or
    3-4 ints. ``None`` is class ``index``'s default, transparent for class 0 (see the module note)."""
    if color is None:
        r, g, b, _ = parse_color(default_color(index))
        return (r, g, b, 0 if index == 0 else 255)
    if isinstance(color, str):
        text = color.strip()
        from PIL import ImageColor  # PIL's parser knows hex forms and the CSS colour names

        try:
            vals = list(ImageColor.getrgb(f"#{text}" if _BARE_HEX.match(text) else text))
        except ValueError as exc:
            raise ConfigError(f"colour {color!r} is not #rrggbb, #rrggbbaa or a colour name") from exc
    else:
        try:
            vals = [int(v) for v in color]
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"colour {color!r} is not a colour string or a sequence of ints") from exc
    if len(vals) not in (3, 4) or not all(0 <= v <= 255 for v in vals):
        raise ConfigError(f"colour {color!r} needs 3 or 4 values in 0..255")
    return (vals[0], vals[1], vals[2], vals[3] if len(vals) == 4 else 255)


def class_rgba(names: Sequence[str], colors: Sequence[Any] | None, *, exact: bool = False) -> list[RGBA]:
    """One RGBA per class; defaults fill what ``colors`` leaves out, unless ``exact`` demands all."""
    given = list(colors or [])
    if exact and len(given) != len(names):
        raise ConfigError(f"{len(given)} colours for {len(names)} classes")
    return [parse_color(given[i] if i < len(given) else None, index=i) for i in range(len(names))]


def to_hex(rgba: Sequence[int]) -> str:
    """``#rrggbb`` (alpha dropped): the form class colours take in tags and bundle files."""
    return "#{:02x}{:02x}{:02x}".format(*rgba[:3])


def palette(colors: Sequence[RGBA], nodata: int | None = None) -> dict[int, RGBA]:
    """A full 256-entry colour map for uint8 labels: class ``i`` gets ``colors[i]``, ids no class uses
    opaque black, and ``nodata`` is transparent so the map beneath shows through."""
    if len(colors) > 256:
        raise ConfigError(f"{len(colors)} classes do not fit a 256-entry palette")
    cmap = {i: UNUSED for i in range(256)}
    cmap.update(enumerate(colors))
    if nodata is not None:
        cmap[nodata] = TRANSPARENT
    return cmap

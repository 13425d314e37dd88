"""QGIS styles for the label outputs, so a layer opens finished: only the real classes, by name and colour.

QGIS reads a raster's style from a ``.qml`` beside it (``x_labels.tif`` -> ``x_labels.qml``) and a
GeoPackage layer's default style from the file's own ``layer_styles`` table. Without them the labels
COG shows every one of its 256 palette entries and the polygons a single grey symbol. The QML is
built with ElementTree in the form QGIS 3.22 writes itself; ``make test-viewers`` checks what real
QGIS makes of it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from pipeline.atomic import atomic_path
from pipeline.formats.colours import RGBA, to_hex

QGIS_VERSION = "3.22.0-Białowieża"
STYLE_TABLE = "layer_styles"


def qml_path(raster: str | os.PathLike[str]) -> Path:
    """The sidecar QGIS looks for: the file name up to its last dot, plus ``.qml``."""
    path = Path(raster)
    return path.with_name(path.name.rsplit(".", 1)[0] + ".qml")


def _document(category: str) -> tuple[ET.Element, str]:
    root = ET.Element("qgis", version=QGIS_VERSION, styleCategories=category)
    return root, "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"


def _serialise(root: ET.Element, doctype: str) -> str:
    ET.indent(root)
    return doctype + ET.tostring(root, encoding="unicode") + "\n"


def raster_qml(class_names: Sequence[str], colors: Sequence[RGBA]) -> str:
    """A paletted renderer listing one entry per class; nodata comes from the file and stays transparent
    (an empty ``nodataColor``), and a class whose colour has alpha 0 is drawn transparent too."""
    root, doctype = _document("Symbology")
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(
        pipe,
        "rasterrenderer",
        type="paletted",
        band="1",
        opacity="1",
        alphaBand="-1",
        nodataColor="",
    )
    ET.SubElement(renderer, "rasterTransparency")
    palette = ET.SubElement(renderer, "colorPalette")
    for value, (name, rgba) in enumerate(zip(class_names, colors, strict=True)):
        ET.SubElement(
            palette, "paletteEntry", value=str(value), color=to_hex(rgba), alpha=str(rgba[3]), label=name
        )
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    ET.SubElement(root, "blendMode").text = "0"
    return _serialise(root, doctype)


def _option_map(parent: ET.Element, values: dict[str, str]) -> None:
    options = ET.SubElement(parent, "Option", type="Map")
    for key, value in values.items():
        ET.SubElement(options, "Option", name=key, value=value, type="QString")


def vector_qml(class_names: Sequence[str], colors: Sequence[RGBA], field: str = "class_id") -> str:
    """A categorised renderer on ``field``: one solid fill per class in its colour, no outline."""
    root, doctype = _document("Symbology")
    renderer = ET.SubElement(
        root, "renderer-v2", type="categorizedSymbol", attr=field, symbollevels="0", forceraster="0"
    )
    categories = ET.SubElement(renderer, "categories")
    symbols = ET.SubElement(renderer, "symbols")
    for value, (name, rgba) in enumerate(zip(class_names, colors, strict=True)):
        ET.SubElement(categories, "category", value=str(value), symbol=str(value), label=name, render="true")
        symbol = ET.SubElement(
            symbols, "symbol", type="fill", name=str(value), alpha="1", clip_to_extent="1", force_rhr="0"
        )
        layer = ET.SubElement(symbol, "layer", {"class": "SimpleFill", "enabled": "1", "pass": "0"})
        rgba_text = ",".join(str(c) for c in rgba)
        _option_map(
            layer,
            {"color": rgba_text, "style": "solid", "outline_style": "no", "outline_color": rgba_text},
        )
    return _serialise(root, doctype)


def write_raster_style(
    raster: str | os.PathLike[str],
    class_names: Sequence[str],
    colors: Sequence[RGBA],
    *,
    overwrite: bool = False,
) -> Path:
    """Write the ``.qml`` sidecar of a labels raster, atomically; returns its path."""
    dest = qml_path(raster)
    with atomic_path(dest, overwrite=overwrite) as tmp:
        tmp.write_text(raster_qml(class_names, colors), encoding="utf-8")
    return dest


def style_records(
    layer: str, qml: str, *, geometry_column: str = "geom"
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Schema and row of the ``layer_styles`` table QGIS reads a GeoPackage layer's default style from
    (the columns QGIS itself creates when it saves a style into the database)."""
    schema = {
        "geometry": "None",
        "properties": {
            "f_table_catalog": "str:256",
            "f_table_schema": "str:256",
            "f_table_name": "str:256",
            "f_geometry_column": "str:256",
            "styleName": "str:30",
            "styleQML": "str",
            "styleSLD": "str",
            "useAsDefault": "bool",
            "description": "str",
            "owner": "str:30",
            "ui": "str",
            "update_time": "datetime",  # QGIS orders a layer's styles by it: without it none loads
        },
    }
    row = {
        "f_table_catalog": "",
        "f_table_schema": "",
        "f_table_name": layer,
        "f_geometry_column": geometry_column,
        "styleName": layer,
        "styleQML": qml,
        "styleSLD": "",
        "useAsDefault": True,
        "description": "tilewise: classes by name and colour",
        "owner": "",
        "ui": None,
        "update_time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
    }
    return schema, [row]

"""QGIS styles as the outputs carry them: a raster ``.qml`` sidecar and a GeoPackage ``layer_styles`` row.

Real QGIS reading them is ``make test-viewers`` (tests/viewers/check_qgis.py); these check the files
each writer leaves, read back with the same tools QGIS uses underneath (XML, OGR).
"""

from __future__ import annotations

import warnings
from xml.etree import ElementTree as ET

import fiona
import rasterio

from pipeline.formats.colours import class_rgba
from pipeline.formats.geotiff import open_geotiff
from pipeline.formats.qgis_style import qml_path, raster_qml
from pipeline.formats.vector import write_polygons
from tests.pipeline.formats.sample_data import BUILDINGS_MASK, requires_data

pytestmark = requires_data

NAMES = ["background", "building"]


def test_qml_sits_where_qgis_looks_for_it():
    assert qml_path("/out/a/x_labels.tif").as_posix() == "/out/a/x_labels.qml"
    assert qml_path("x.y_labels.tif").name == "x.y_labels.qml"


def test_raster_style_lists_only_the_classes_with_their_alpha():
    colors = class_rgba(NAMES, [None, "#ff0000"])  # class 0 without a colour is transparent
    root = ET.fromstring(raster_qml(NAMES, colors).split("\n", 1)[1])
    renderer = root.find("pipe/rasterrenderer")
    assert renderer.get("type") == "paletted" and renderer.get("nodataColor") == ""
    entries = [
        (e.get("value"), e.get("label"), e.get("color"), e.get("alpha"))
        for e in renderer.iter("paletteEntry")
    ]
    assert entries == [("0", "background", "#4e79a7", "0"), ("1", "building", "#ff0000", "255")]


def test_geopackage_carries_its_default_style(tmp_path):
    with rasterio.open(BUILDINGS_MASK) as src:
        mask = src.read(1)
    meta = open_geotiff(str(BUILDINGS_MASK)).meta
    dest = tmp_path / "b.gpkg"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not a .gpkg extension" warning from GDAL/fiona
        n = write_polygons(mask, dest, meta=meta, class_names=NAMES, class_colors=["#000000", "#e15759"])
    assert n > 0 and sorted(fiona.listlayers(dest)) == ["classes", "layer_styles"]
    with fiona.open(dest, layer="layer_styles") as styles:
        rows = [f.properties for f in styles]
    assert len(rows) == 1
    row = rows[0]
    assert (row["f_table_name"], row["f_geometry_column"], row["useAsDefault"]) == ("classes", "geom", True)
    with fiona.open(dest, layer="classes") as layer:
        assert layer.schema["properties"]["class_id"].startswith("int")
    root = ET.fromstring(row["styleQML"].split("\n", 1)[1])
    renderer = root.find("renderer-v2")
    assert (renderer.get("type"), renderer.get("attr")) == ("categorizedSymbol", "class_id")
    cats = [(c.get("value"), c.get("label")) for c in renderer.iter("category")]
    assert cats == [("0", "background"), ("1", "building")]
    fills = [o.get("value") for o in renderer.iter("Option") if o.get("name") == "color"]
    assert fills == ["0,0,0,255", "225,87,89,255"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.gpkg"]

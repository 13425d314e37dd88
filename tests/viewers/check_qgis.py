"""Open tilewise's geo outputs in real QGIS, headless, and check what a user would see; render a PNG.

Runs under Debian's ``/usr/bin/python3`` (QGIS's own bindings, not the venv) with
``QT_QPA_PLATFORM=offscreen``: ``make test-viewers`` makes the outputs with the venv first, then runs

    /usr/bin/python3 tests/viewers/check_qgis.py OUT_DIR INPUT.tif BUNDLE_DIR [--png PATH]

Every ``*_labels.tif``, ``*_probabilities.tif`` and ``*_polygons.gpkg`` in OUT_DIR is checked against
the bundle's classes and the input's CRS: the renderer QGIS chose, each class's value, name and
colour, nodata and the CRS. Exits non-zero, naming each failed check.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import (  # after QT_QPA_PLATFORM: Qt reads it on load
    QgsApplication,
    QgsMapRendererParallelJob,
    QgsMapSettings,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor

FAILURES: list[str] = []


def check(ok: bool, what: str) -> None:
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        FAILURES.append(what)


def bundle_classes(bundle: Path) -> list[tuple[str, str]]:
    """(name, #rrggbb) per class, from the bundle's model.yaml (every class there has a colour)."""
    config = yaml.safe_load((bundle / "model.yaml").read_text())
    return [(c["name"], QColor(c["color"]).name()) for c in config["classes"]]


def check_labels(path: Path, classes: list[tuple[str, str]], crs: str) -> QgsRasterLayer:
    layer = QgsRasterLayer(str(path), path.name)
    check(layer.isValid(), f"{path.name}: opens")
    renderer = layer.renderer()
    check(renderer.type() == "paletted", f"{path.name}: renderer is paletted ({renderer.type()})")
    got = [(int(c.value), c.label, c.color.name()) for c in renderer.classes()]
    want = [(i, name, color) for i, (name, color) in enumerate(classes)]
    check(got == want, f"{path.name}: legend lists exactly the classes {want} (got {got})")
    legend = [text for text, _ in renderer.legendSymbologyItems()]
    check(legend == [name for name, _ in classes], f"{path.name}: legend entries {legend}")
    provider = layer.dataProvider()
    nodata = provider.sourceNoDataValue(1) if provider.sourceHasNoDataValue(1) else None
    check(nodata == 255, f"{path.name}: nodata is 255 ({nodata})")
    check(not renderer.nodataColor().isValid(), f"{path.name}: nodata drawn transparent")
    check(layer.crs().authid() == crs, f"{path.name}: CRS {layer.crs().authid()} == {crs}")
    return layer


def check_probabilities(path: Path, classes: list[tuple[str, str]], crs: str) -> None:
    layer = QgsRasterLayer(str(path), path.name)
    check(layer.isValid(), f"{path.name}: opens")
    names = [layer.dataProvider().generateBandName(k) for k in range(1, layer.bandCount() + 1)]
    shown = [layer.bandName(k) for k in range(1, layer.bandCount() + 1)]
    ok = len(shown) == len(classes) and all(n in s for (n, _), s in zip(classes, shown, strict=False))
    check(ok, f"{path.name}: bands named after the classes ({shown}; provider {names})")
    check(layer.crs().authid() == crs, f"{path.name}: CRS {layer.crs().authid()} == {crs}")


def check_polygons(path: Path, classes: list[tuple[str, str]], crs: str) -> QgsVectorLayer:
    layer = QgsVectorLayer(f"{path}|layername=classes", path.name, "ogr")
    check(layer.isValid(), f"{path.name}: opens")
    renderer = layer.renderer()
    kind = renderer.type()
    check(kind == "categorizedSymbol", f"{path.name}: default style is categorised ({kind})")
    if kind == "categorizedSymbol":
        check(renderer.classAttribute() == "class_id", f"{path.name}: by class_id")
        got = [(int(c.value()), c.label(), c.symbol().color().name()) for c in renderer.categories()]
        want = [(i, name, color) for i, (name, color) in enumerate(classes)]
        check(got == want, f"{path.name}: categories {got} == {want}")
    check(layer.featureCount() > 0, f"{path.name}: has {layer.featureCount()} polygons")
    check(layer.crs().authid() == crs, f"{path.name}: CRS {layer.crs().authid()} == {crs}")
    return layer


def render(png: Path, layers: list, size: int = 512) -> None:
    """Draw ``layers`` (top first) over their joint extent, as QGIS's map canvas would."""
    settings = QgsMapSettings()
    settings.setLayers(layers)
    extent = layers[-1].extent()
    settings.setExtent(extent)
    settings.setDestinationCrs(layers[-1].crs())
    ratio = extent.height() / extent.width()
    settings.setOutputSize(QSize(size, max(1, round(size * ratio))))
    settings.setBackgroundColor(QColor("white"))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage()
    png.parent.mkdir(parents=True, exist_ok=True)
    check(image.save(str(png), "PNG"), f"rendered {png}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("input", type=Path, help="the input raster the outputs were made from")
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--png", type=Path, help="render the labels over the input here")
    args = parser.parse_args()
    app = QgsApplication([], False)
    app.initQgis()
    try:
        classes = bundle_classes(args.bundle)
        source = QgsRasterLayer(str(args.input), "input")
        crs = source.crs().authid()
        check(source.isValid() and bool(crs), f"input {args.input.name} opens with CRS {crs}")
        labels = sorted(args.out_dir.rglob("*_labels.tif"))
        check(bool(labels), f"{args.out_dir} holds label COGs")
        layers = [check_labels(p, classes, crs) for p in labels]
        for p in sorted(args.out_dir.rglob("*_probabilities.tif")):
            check_probabilities(p, classes, crs)
        for p in sorted(args.out_dir.rglob("*_polygons.gpkg")):
            check_polygons(p, classes, crs)
        if args.png and layers:
            layers[0].renderer().setOpacity(0.6)
            render(args.png, [layers[0], source])
    finally:
        QgsProject.instance().clear()
    print(f"{len(FAILURES)} failed check(s)" if FAILURES else "all QGIS checks passed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # QGIS 3.22 headless segfaults in exitQgis() or while Python tears its Qt objects down (exit 139
    # after every check passed): leave without that teardown, so the exit code is the checks' verdict.
    os._exit(code)

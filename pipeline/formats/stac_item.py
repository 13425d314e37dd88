"""A STAC Item per geo scene (``NAME_item.json``), so the outputs drop into a catalogue as they are.

Built with pystac and its extensions only (no hand-written JSON): ``proj`` (exact grid), ``raster``
(dtype, nodata, scale per asset), ``label`` (the classes, a segmentation task), ``mlm`` (the bundle
that made it) and ``processing`` (software, when). Asset hrefs are relative to the item, so the
folder can be copied or uploaded whole. A ``derived_from`` link names the source: its STAC Item when
the input was one, else the raster itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_path
from pipeline.formats.colours import class_rgba, to_hex
from pipeline.formats.scene import GeoMeta

ASSET_MEDIA = {  # output kind -> (media type, roles, title)
    "labels": ("image/tiff; application=geotiff; profile=cloud-optimized", ["data", "labels"], "class ids"),
    "probabilities": (
        "image/tiff; application=geotiff; profile=cloud-optimized",
        ["data"],
        "class probabilities",
    ),
    "polygons": ("application/geopackage+sqlite3", ["data", "labels"], "class polygons"),
    "style": ("text/xml", ["metadata", "style"], "QGIS style of the labels"),
    "quicklook": ("image/png", ["overview", "visual"], "quicklook"),
    "report": ("application/json", ["metadata"], "tilewise report"),
}


@dataclass(frozen=True)
class ModelCard:
    """What the ``mlm`` extension says about the bundle; filled from it by the job layer."""

    name: str
    architecture: str
    bands: Sequence[str]
    patch_size: Sequence[int]
    normalization: Mapping[str, Any]
    classes: Sequence[str]
    colors: Sequence[str]  # "#rrggbb" per class
    hash: str
    weights: str  # href of the weights file
    framework: str = "pytorch"
    extra: Mapping[str, Any] = field(default_factory=dict)


def model_card(bundle: Any) -> ModelCard:
    """What a STAC Item's ``mlm`` fields say about a ``models.bundle.Bundle``."""
    cfg = bundle.config
    return ModelCard(
        name=cfg.name,
        architecture=str(cfg.architecture.get("name", "unknown")),
        bands=list(cfg.inputs.channels),
        patch_size=list(cfg.patch_size),
        normalization=cfg.inputs.normalization.model_dump(),
        classes=list(bundle.class_names),
        colors=[to_hex(c) for c in class_rgba(bundle.class_names, bundle.class_colors)],
        hash=bundle.hash,
        weights=str(Path(bundle.path).resolve() / "weights.safetensors"),
    )


def _footprint(meta: GeoMeta, shape: tuple[int, int]) -> tuple[dict[str, Any] | None, list[float] | None]:
    """The scene outline and bbox in WGS84 (densified edges, so a reprojected outline stays close).

    An outline no projection can take to WGS84 (a grid that runs off the CRS's area) gives a null
    geometry, which STAC allows: the item keeps the exact native grid in ``proj:*``, and the outputs
    of hours of blocks are not lost for want of a bbox."""
    if meta.crs is None:
        return None, None
    from rasterio._err import CPLE_BaseError  # the root of GDAL's errors; rasterio does not export it
    from rasterio.errors import RasterioError
    from rasterio.warp import transform_geom

    height, width = shape
    t, n = meta.transform, 4
    ring = (
        [(width * i / n, 0) for i in range(n)]
        + [(width, height * i / n) for i in range(n)]
        + [(width * (n - i) / n, height) for i in range(n)]
        + [(0, height * (n - i) / n) for i in range(n)]
    )
    coords = [(t.c + t.a * c + t.b * r, t.f + t.d * c + t.e * r) for c, r in ring]
    geom = {"type": "Polygon", "coordinates": [[*coords, coords[0]]]}
    try:
        wgs84 = transform_geom(meta.crs, "EPSG:4326", geom)
    except (RasterioError, CPLE_BaseError):
        return None, None
    xs = [p[0] for p in wgs84["coordinates"][0]]
    ys = [p[1] for p in wgs84["coordinates"][0]]
    wgs84["coordinates"] = [[list(p) for p in wgs84["coordinates"][0]]]
    return wgs84, [min(xs), min(ys), max(xs), max(ys)]


def mlm_name(name: str) -> str:
    """``name`` as MLM allows it (a letter first, at least three characters, no punctuation at the end):
    a bundle may be called ``b`` or ``3-class``."""
    text = re.sub(r"[^A-Za-z0-9_.\-\s]", "-", name).rstrip("_.- \t")
    if not text[:1].isalpha():
        text = f"model-{text}".rstrip("-")
    return text if len(text) >= 3 else f"{text}-model"


def _value_scaling(normalization: Mapping[str, Any]) -> list[Any] | None:
    from pystac.extensions.mlm import ValueScaling, ValueScalingType

    kind = normalization.get("kind", "none")
    if kind == "zscore":
        return [
            ValueScaling.create(ValueScalingType.Z_SCORE, mean=m, stddev=s)
            for m, s in zip(normalization["mean"], normalization["std"], strict=True)
        ]
    if kind == "scale":
        factor, offset = normalization.get("factor", 1.0), normalization.get("offset", 0.0)
        return [ValueScaling.create(ValueScalingType.SCALE, value=1.0 / factor)] if offset == 0 else None
    return None  # percentile and CT windows are per scene: described in the report and the bundle


def _apply_mlm(item: Any, model: ModelCard, dims: int) -> None:
    from pystac.extensions.classification import Classification
    from pystac.extensions.mlm import (
        InputStructure,
        MLMExtension,
        ModelInput,
        ModelOutput,
        ResultStructure,
        TaskType,
    )
    from pystac.extensions.raster import DataType

    spatial = ["height", "width"] if dims == 2 else ["depth", "height", "width"]
    window = [int(n) for n in model.patch_size]
    inputs = ModelInput.create(
        name="image",
        bands=list(model.bands),
        input=InputStructure.create(
            shape=[-1, len(model.bands), *window],
            dim_order=["batch", "bands", *spatial],
            data_type=DataType.FLOAT32,
        ),
    )
    scaling = _value_scaling(model.normalization)
    # mlm 1.4 wants one scaling object per band (an array); pystac's setter takes a single one
    inputs.properties["value_scaling"] = None if scaling is None else [v.to_dict() for v in scaling]
    classes = [
        Classification.create(value=i, description=name, name=name, color_hint=color.lstrip("#").upper())
        for i, (name, color) in enumerate(zip(model.classes, model.colors, strict=True))
    ]
    output = ModelOutput.create(
        name="classes",
        tasks=[TaskType.SEMANTIC_SEGMENTATION],
        result=ResultStructure.create(
            shape=[-1, len(model.classes), *window],
            dim_order=["batch", "channel", *spatial],
            data_type=DataType.FLOAT32,
        ),
        classes=classes,
    )
    MLMExtension.ext(item, add_if_missing=True).apply(
        name=mlm_name(model.name),
        architecture=model.architecture,
        tasks=[TaskType.SEMANTIC_SEGMENTATION],
        input=[inputs],
        output=[output],
        framework=model.framework,
    )


def build_item(
    item_id: str,
    *,
    meta: GeoMeta,
    shape: tuple[int, int],
    nodata: int,
    outputs: Mapping[str, str | os.PathLike[str]],
    model: ModelCard,
    source: str,
    source_item: str | None = None,
    acquired: datetime | None = None,
    software_version: str = "",
) -> Any:
    """The pystac Item for one scene's outputs (``outputs``: kind -> file beside the item)."""
    import pystac
    from pystac.extensions.label import LabelClasses, LabelExtension, LabelType
    from pystac.extensions.processing import ProcessingExtension
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import DataType, RasterBand, RasterExtension

    now = datetime.now(UTC).replace(microsecond=0)
    geometry, bbox = _footprint(meta, shape)
    item = pystac.Item(item_id, geometry, bbox, acquired or now, properties={})
    t = meta.transform
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = meta.crs.to_epsg() if meta.crs is not None else None
    proj.apply(
        code=f"EPSG:{epsg}" if epsg else None,
        wkt2=None if epsg or meta.crs is None else meta.crs.to_wkt(),
        shape=list(shape),
        transform=[t.a, t.b, t.c, t.d, t.e, t.f, 0.0, 0.0, 1.0],
    )
    gsd = abs(t.a) if t.b == 0 and t.d == 0 else None
    for kind, path in sorted(outputs.items()):
        media, roles, title = ASSET_MEDIA.get(kind, (None, ["metadata"], kind))
        if str(path).endswith(".zarr"):
            media = "application/vnd+zarr"
        asset = pystac.Asset(f"./{Path(path).name}", title=title, media_type=media, roles=roles)
        item.add_asset(kind, asset)
        if kind == "labels":
            band = RasterBand.create(nodata=nodata, data_type=DataType.UINT8, spatial_resolution=gsd)
            RasterExtension.ext(asset, add_if_missing=True).apply(bands=[band])
        elif kind == "probabilities":
            bands = [
                RasterBand.create(data_type=DataType.UINT8, scale=1 / 255, offset=0.0, spatial_resolution=gsd)
                for _ in model.classes
            ]
            RasterExtension.ext(asset, add_if_missing=True).apply(bands=bands)
    weights = pystac.Asset(model.weights, title=f"bundle {model.name}", roles=["mlm:model", "mlm:weights"])
    weights.extra_fields["mlm:artifact_type"] = "safetensors"
    weights.extra_fields["tilewise:bundle_hash"] = model.hash
    item.add_asset("model", weights)
    inputs = []
    for name in model.bands:  # MLM asks the model asset to name the bands it reads
        band = RasterBand.create(data_type=DataType.FLOAT32)
        band.properties["name"] = name
        inputs.append(band)
    RasterExtension.ext(weights, add_if_missing=True).apply(bands=inputs)
    LabelExtension.ext(item, add_if_missing=True).apply(
        label_description=f"{model.name} semantic segmentation: one class id per pixel",
        label_type=LabelType.RASTER,
        label_properties=None,
        label_classes=[LabelClasses.create(classes=list(model.classes), name=None)],
        label_tasks=["segmentation"],
        label_methods=["automated"],
    )
    _apply_mlm(item, model, len(shape))
    ProcessingExtension.ext(item, add_if_missing=True).apply(
        software={"tilewise": software_version}, processing_datetime=now, lineage=f"segmented by {model.name}"
    )
    if source_item:
        item.add_link(pystac.Link("derived_from", source_item, pystac.MediaType.GEOJSON, "source item"))
    else:
        item.add_link(pystac.Link("derived_from", source, pystac.MediaType.GEOTIFF, "source raster"))
    return item


def write_stac_item(dest: str | os.PathLike[str], item: Any, *, overwrite: bool = False) -> Path:
    """Write ``item`` as JSON through pystac, atomically (hrefs stay relative to ``dest``)."""
    import pystac

    dest = Path(dest)
    with atomic_path(dest, overwrite=overwrite) as tmp:
        pystac.StacIO.default().save_json(
            str(tmp), item.to_dict(include_self_link=False, transform_hrefs=False)
        )
    return dest

"""Label and probability COGs that open correctly in QGIS, written without holding the scene in memory.

Either rows are streamed into a tiled staging GTiff, or (``gdal_source=``) a small VRT points GDAL at
arrays it reads itself (the work store's Zarr v2 labels and, for labels, overview levels the workers
built). GDAL's COG driver then writes the final layout in one copy, compressing on every core; the
result appears at its final name only by atomic rename.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from pipeline.atomic import atomic_path, temp_sibling
from pipeline.errors import ConfigError, InputError, OutputError
from pipeline.formats.colours import RGBA, class_rgba, palette, to_hex
from pipeline.formats.gdal_cache import bound_gdal_cache
from pipeline.formats.qgis_style import write_raster_style
from pipeline.formats.scene import GeoMeta

_PREDICTOR_CODECS = {"DEFLATE", "ZSTD", "LZW", "LZMA"}
# The final COG copy runs in the job process after the workers are done: serial time for the whole
# scene. GDAL's threaded compression writes the same bytes for any thread count (tested), which the
# resume tests rely on.
COPY_THREADS = "ALL_CPUS"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _to_uint8(block: Any, what: str, dest: Path, *, scale_floats: bool = False) -> np.ndarray:
    arr = np.asarray(block)
    if arr.dtype == np.uint8:
        return arr
    if scale_floats and np.issubdtype(arr.dtype, np.floating):
        return np.clip(np.rint(np.nan_to_num(arr) * 255.0), 0, 255).astype(np.uint8)
    if arr.dtype != bool and not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{what} must be uint8, got {arr.dtype}", path=str(dest))
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise InputError(f"{what} values outside 0..255", path=str(dest))
    return arr.astype(np.uint8)


def _pam_xml(class_names: Sequence[str], class_colors: Sequence[RGBA]) -> str:
    """PAM sidecar with category names and a thematic RAT: rasterio cannot set either, GDAL reads both,
    and QGIS takes its paletted legend labels from the category names."""
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    cats = ET.SubElement(band, "CategoryNames")
    for name in class_names:
        ET.SubElement(cats, "Category").text = name
    rat = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    # GFT: 0 integer, 2 string; GFU: 5 MinMax (the pixel value), 2 Name, 6/7/8 Red/Green/Blue.
    fields = [("Value", 0, 5), ("Class", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8)]
    for i, (name, typ, usage) in enumerate(fields):
        fd = ET.SubElement(rat, "FieldDefn", index=str(i))
        ET.SubElement(fd, "Name").text = name
        ET.SubElement(fd, "Type").text = str(typ)
        ET.SubElement(fd, "Usage").text = str(usage)
    for value, (name, rgb) in enumerate(zip(class_names, class_colors, strict=True)):
        row = ET.SubElement(rat, "Row", index=str(value))
        for cell in (value, name, *rgb[:3]):
            ET.SubElement(row, "F").text = str(cell)
    return ET.tostring(root, encoding="unicode")


def _aux(path: Path) -> Path:
    return path.with_name(path.name + ".aux.xml")


def _write_cog(
    dest: str | os.PathLike[str],
    *,
    shape: tuple[int, int, int],
    read_rows: Callable[[int, int], np.ndarray],
    meta: GeoMeta,
    nodata: int | None,
    overwrite: bool,
    block_rows: int,
    resampling: str,
    compress: str,
    setup: Callable[[Any], None],
    pam: str | None = None,
    gdal_source: str | None = None,
    overview_sources: Sequence[str] = (),
) -> Path:
    """Stream ``read_rows(r0, r1) -> (count, r1-r0, W) uint8`` into a staging GTiff, then COG-copy it.

    With ``gdal_source`` (a GDAL dataset name of ``count`` uint8 bands) the stage is a VRT over it
    instead, with ``overview_sources`` as its overview levels: the COG driver then copies those levels
    (``OVERVIEWS=FORCE_USE_EXISTING``) rather than computing them; without levels it computes them on
    ``COPY_THREADS`` threads (GDAL's threaded overviews give the same pixels for any thread count).

    The COG and its PAM ``.aux.xml`` (if GDAL wrote one) are moved into place together: sidecar first,
    the COG last, so the final name never points at a half-written file.
    """
    bound_gdal_cache()  # writing and the overview build go through the same block cache
    dest = Path(dest)
    count, height, width = shape
    if block_rows < 1:
        raise ConfigError(f"block_rows must be >= 1, got {block_rows}")
    compress = compress.upper()
    options: dict[str, Any] = {
        "BLOCKSIZE": 512,
        "COMPRESS": compress,
        "OVERVIEW_RESAMPLING": resampling,
        "BIGTIFF": "IF_SAFER",
        "NUM_THREADS": COPY_THREADS,
    }
    if compress in _PREDICTOR_CODECS:
        options["PREDICTOR"] = 2
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": "uint8",
        "crs": meta.crs,
        "transform": meta.transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "zstd",
        "zstd_level": 1,
        "bigtiff": "if_safer",
    }
    try:
        with atomic_path(dest, overwrite=overwrite) as tmp:
            stage = temp_sibling(dest)
            try:
                if gdal_source is not None:
                    stage.write_text(_vrt(shape, gdal_source, overview_sources, pam), encoding="utf-8")
                    if overview_sources:
                        options["OVERVIEWS"] = "FORCE_USE_EXISTING"
                with warnings.catch_warnings():  # the VRT is georeferenced just below, where the scene is
                    warnings.simplefilter("ignore", NotGeoreferencedWarning)
                    opened = (
                        rasterio.open(stage, "r+") if gdal_source else rasterio.open(stage, "w", **profile)
                    )
                with opened as dst:
                    if gdal_source is not None:  # a scene without georeferencing keeps none
                        if meta.crs is not None:
                            dst.crs = meta.crs
                        if meta.transform is not None and not meta.transform.is_identity:
                            dst.transform = meta.transform
                        dst.nodata = nodata
                    if "AREA_OR_POINT" in meta.tags:  # keeps the input's GeoTIFF tie-point convention
                        dst.update_tags(AREA_OR_POINT=meta.tags["AREA_OR_POINT"])
                    setup(dst)
                    for r0 in range(0, height, block_rows) if gdal_source is None else ():
                        r1 = min(height, r0 + block_rows)
                        dst.write(read_rows(r0, r1), window=Window(0, r0, width, r1 - r0))
                if pam is not None and gdal_source is None:
                    _aux(stage).write_text(pam, encoding="utf-8")
                with rasterio.Env(GDAL_NUM_THREADS=COPY_THREADS):
                    rasterio.shutil.copy(stage, tmp, driver="COG", **options)
                if _aux(tmp).exists():
                    os.replace(_aux(tmp), _aux(dest))
                elif _aux(dest).exists():
                    _aux(dest).unlink()  # a stale sidecar would relabel the new file
            finally:
                for leftover in (stage, _aux(stage), _aux(tmp)):
                    with suppress(OSError):
                        leftover.unlink(missing_ok=True)
    except RasterioError as exc:  # GDAL errors that are not OSErrors (those atomic_path already maps)
        raise OutputError(f"cannot write COG: {_reason(exc)}", path=str(dest)) from exc
    return dest


def _band_colours(count: int) -> list[str]:
    """The band colours GDAL gives a new GTiff of ``count`` uint8 bands (RGB for three, ...), as the
    staging GTiff had them, except that no band is alpha: with four probability bands GDAL made the
    fourth an alpha band, so readers hid pixels where that class's probability was 0, and GDAL's
    AVERAGE overviews zeroed every band there (fixed deliberately; full-resolution pixels unchanged)."""
    from rasterio.io import MemoryFile

    with warnings.catch_warnings():  # a scratch dataset: it has no georeferencing to warn about
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with (
            MemoryFile() as mem,
            mem.open(driver="GTiff", width=1, height=1, count=count, dtype="uint8") as ds,
        ):
            return ["Undefined" if c.name == "alpha" else c.name.capitalize() for c in ds.colorinterp]


def _vrt(shape: tuple[int, int, int], source: str, overviews: Sequence[str], pam: str | None) -> str:
    """A VRT of ``source``'s bands in 512² blocks (the staging GTiff's, so GDAL walks it the same way),
    with ``overviews`` as explicit overview levels and the PAM band items (categories, RAT) inline."""
    count, height, width = shape
    interp = _band_colours(count)
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    items = ET.fromstring(pam).find("PAMRasterBand") if pam is not None else None
    extra = list(items) if items is not None else []
    for b in range(1, count + 1):
        band = ET.SubElement(
            root, "VRTRasterBand", dataType="Byte", band=str(b), blockXSize="512", blockYSize="512"
        )
        ET.SubElement(band, "ColorInterp").text = interp[b - 1]
        band.extend(extra)
        src = ET.SubElement(band, "SimpleSource")
        ET.SubElement(src, "SourceFilename", relativeToVRT="0").text = source
        ET.SubElement(src, "SourceBand").text = str(b)
        for level in overviews:
            ov = ET.SubElement(band, "Overview")
            ET.SubElement(ov, "SourceFilename", relativeToVRT="0").text = level
            ET.SubElement(ov, "SourceBand").text = str(b)
    return ET.tostring(root, encoding="unicode")


def _check_classes(class_names: Sequence[str], nodata: int | None, dest: Path) -> None:
    if not class_names:
        raise ConfigError("at least one class name is needed", path=str(dest))
    if nodata is not None and not len(class_names) <= nodata <= 255:
        raise ConfigError(
            f"nodata {nodata} must be in {len(class_names)}..255 (above the class ids)", path=str(dest)
        )


def write_cog_labels(
    labels: Any,
    dest: str | os.PathLike[str],
    *,
    meta: GeoMeta,
    class_names: Sequence[str],
    class_colors: Sequence[Any],
    nodata: int = 255,
    overwrite: bool = False,
    block_rows: int = 1024,
    compress: str = "DEFLATE",
    tags: dict[str, str] | None = None,
    gdal_source: str | None = None,
    overview_sources: Sequence[str] = (),
) -> Path:
    """Write ``(H, W)`` class ids (numpy, zarr, anything sliceable) as a paletted COG, atomically.

    ``gdal_source`` names the same labels as GDAL reads them (a Zarr v2 array) and ``overview_sources``
    their MODE levels (``pipeline.formats.overviews``): then nothing streams through this process.

    Overviews use MODE so they hold only class ids or nodata. Class names land three ways so every
    reader finds them: a ``CLASS_NAMES`` JSON tag in the TIFF, and category names + a RAT in the PAM
    ``dest.aux.xml`` GDAL writes beside it (GTiff cannot hold those itself). A QGIS style
    (``dest`` with ``.qml``) lists only the classes, so the legend is not 256 palette entries.
    """
    dest = Path(dest)
    if len(labels.shape) != 2:
        raise InputError(f"labels must be (H, W), got shape {tuple(labels.shape)}", path=str(dest))
    _check_classes(class_names, nodata, dest)
    try:
        colors = class_rgba(class_names, class_colors, exact=True)
    except ConfigError as exc:
        raise ConfigError(str(exc), path=str(dest)) from exc

    def setup(dst: Any) -> None:
        dst.write_colormap(1, palette(colors, nodata))
        dst.update_tags(
            CLASS_NAMES=json.dumps(list(class_names)),
            CLASS_COLORS=json.dumps([to_hex(c) for c in colors]),
            **(tags or {}),
        )
        dst.update_tags(1, NODATA_MEANING="no prediction (outside the scene or no valid input)")

    def read_rows(r0: int, r1: int) -> np.ndarray:
        return _to_uint8(labels[r0:r1], "labels", dest)[None]

    height, width = (int(n) for n in labels.shape)
    _write_cog(
        dest,
        shape=(1, height, width),
        read_rows=read_rows,
        meta=meta,
        nodata=nodata,
        overwrite=overwrite,
        block_rows=block_rows,
        resampling="MODE",
        compress=compress,
        setup=setup,
        pam=_pam_xml(class_names, colors),
        gdal_source=gdal_source,
        overview_sources=overview_sources,
    )
    write_raster_style(dest, class_names, colors, overwrite=True)  # the COG is this run's: so is its style
    return dest


def write_cog_probabilities(
    probs: Any,
    dest: str | os.PathLike[str],
    *,
    meta: GeoMeta,
    class_names: Sequence[str],
    overwrite: bool = False,
    block_rows: int = 1024,
    compress: str = "DEFLATE",
    tags: dict[str, str] | None = None,
    gdal_source: str | None = None,
    overview_sources: Sequence[str] = (),
) -> Path:
    """Write ``(K, H, W)`` probabilities as a K-band uint8 COG (band k = class k, scale 1/255).

    Floats in [0, 1] are accepted and quantised to 0..255. Overviews use AVERAGE (these are
    continuous values), and each band is described by its class name.
    """
    dest = Path(dest)
    if len(probs.shape) != 3:
        raise InputError(f"probabilities must be (K, H, W), got shape {tuple(probs.shape)}", path=str(dest))
    count, height, width = (int(n) for n in probs.shape)
    _check_classes(class_names, None, dest)
    if count != len(class_names):
        raise ConfigError(f"{count} probability bands for {len(class_names)} classes", path=str(dest))

    def setup(dst: Any) -> None:
        from rasterio.enums import ColorInterp

        dst.colorinterp = [ColorInterp[c.lower()] for c in _band_colours(count)]
        for k, name in enumerate(class_names, start=1):
            dst.set_band_description(k, name)
        dst.scales = [1.0 / 255.0] * count
        dst.offsets = [0.0] * count
        dst.update_tags(CLASS_NAMES=json.dumps(list(class_names)), **(tags or {}))

    def read_rows(r0: int, r1: int) -> np.ndarray:
        return _to_uint8(probs[:, r0:r1], "probabilities", dest, scale_floats=True)

    return _write_cog(
        dest,
        shape=(count, height, width),
        read_rows=read_rows,
        meta=meta,
        nodata=None,
        overwrite=overwrite,
        block_rows=block_rows,
        resampling="AVERAGE",
        compress=compress,
        setup=setup,
        gdal_source=gdal_source,
        overview_sources=overview_sources,
    )

"""Turn a scene's finished work store into the files users open: COG, NIfTI, Zarr, GPKG, PNG.

Every writer renames into place atomically; the order puts the labels first so a crash part-way
leaves complete files only (and no report, so a rerun redoes the outputs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import redact
from pipeline.execution.stages import Stages
from pipeline.execution.thumbnail import Canvas, CanvasScene, sample_labels
from pipeline.execution.workstore import WorkStore
from pipeline.formats.resample import NativeView, ResampledGeoScene
from pipeline.formats.scene import GeoMeta, VolumeMeta
from pipeline.job.config import JobConfig


def remove_small_objects(
    labels: np.ndarray, min_size: int, nodata_label: int, keep_largest: bool = False
) -> np.ndarray:
    """Relabel connected components smaller than ``min_size`` pixels (and, with ``keep_largest``, all but
    the largest of each class; ties: the first in raster order) with their most common neighbour class
    (so no holes of nodata appear). The whole-array reference of the block-wise
    ``pipeline.execution.components.clean_components``, which the job runs."""
    from scipy import ndimage

    out = labels.copy()
    for cls in np.unique(labels):
        if cls == nodata_label:
            continue
        comp, n = ndimage.label(labels == cls)
        if n == 0:
            continue
        sizes = np.bincount(comp.ravel())
        drop = sizes < min_size
        if keep_largest:  # ndimage numbers components by their first pixel in raster order
            drop |= np.arange(len(sizes)) != np.argmax(sizes[1:]) + 1
        drop[0] = False
        for idx in np.flatnonzero(drop):
            region = comp == idx
            ring = ndimage.binary_dilation(region) & ~region
            neighbours = labels[ring]
            neighbours = neighbours[(neighbours != nodata_label) & (neighbours != cls)]
            if neighbours.size:
                out[region] = np.bincount(neighbours).argmax()
    return out


def _cleaned(labels: Any, store: WorkStore, config: JobConfig) -> Any:
    """The labels with small (or all but the largest) components relabelled, block by block into the
    work store (flat memory; identical to ``remove_small_objects`` on the whole array, any chunking)."""
    import zarr

    from pipeline.execution.components import clean_components

    chunks = store.labels("r").chunks[-len(labels.shape) :]
    out = zarr.create_array(
        store=str(store.root / "cleaned.zarr"),
        shape=labels.shape,
        dtype="uint8",
        chunks=tuple(min(c, n) for c, n in zip(chunks, labels.shape, strict=True)),
        compressors=[zarr.codecs.ZstdCodec(level=3)],
        overwrite=True,
    )
    src = labels if hasattr(labels, "chunks") else _Chunked(labels, out.chunks)
    clean_components(
        src,
        out,
        min_size=config.outputs.min_object_size,
        keep_largest=config.outputs.keep_largest,
        nodata=config.outputs.nodata_label,
    )
    return out


class _Chunked:
    """A sliceable array (a native-grid view) with the chunk grid the clean-up walks."""

    def __init__(self, array: Any, chunks: tuple[int, ...]) -> None:
        self.array, self.chunks, self.shape = array, chunks, tuple(array.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.array[key])


def keep_largest_components(labels: np.ndarray, post: Any, nodata_label: int) -> np.ndarray:
    """MONAI's ``KeepLargestConnectedComponent`` on a label array: per applied label (or over their
    union when not ``independent``) keep the ``num_components`` largest components, the rest become 0.

    Limitation: it runs with scipy over the scene's whole label array, so it is meant for volumes that
    fit in memory (medical scenes); the block-wise version replaces it for scenes that do not.
    """
    from scipy import ndimage

    out = np.array(labels, copy=True)
    applied = post.applied_labels
    if applied is None:
        applied = [int(v) for v in np.unique(out) if v not in (0, nodata_label)]
    structure = ndimage.generate_binary_structure(out.ndim, post.connectivity or out.ndim)
    groups = [[a] for a in applied] if post.independent else [list(applied)]
    for group in groups:
        mask = np.isin(out, group)
        comp, n = ndimage.label(mask, structure=structure)
        if n <= post.num_components:
            continue
        sizes = np.bincount(comp.ravel())[1:]
        keep = np.argsort(-sizes, kind="stable")[: post.num_components] + 1
        out[mask & ~np.isin(comp, keep)] = 0
    return out


def write_outputs(
    scene: Any,
    store: WorkStore,
    paths: dict[str, Path],
    fmt: str,
    bundle: Any,
    config: JobConfig,
    *,
    source: str = "",
    source_item: str | None = None,
    canvas: Canvas | None = None,
    timings: dict[str, float] | None = None,
) -> None:
    """Write every output; the quicklook comes from ``canvas`` (the block pass's decimated scene) when
    there is one, so nothing here reads the input again. ``timings`` receives seconds per output."""
    clock = Stages()
    names, colors = bundle.class_names, bundle.class_colors
    nodata = config.outputs.nodata_label
    overwrite = config.outputs.overwrite
    labels: Any = store.labels("r")
    probs: Any = store.probabilities("r")
    engine_scene, processed = scene, False
    if isinstance(scene, ResampledGeoScene):  # engine grid at the bundle's GSD: write on the input's grid
        labels = NativeView(labels, scene.native.spatial_shape)
        probs = None if probs is None else NativeView(probs, scene.native.spatial_shape)
        scene = scene.native
    post = getattr(bundle.config, "postprocess", None)
    if post is not None and post.keep_largest:  # a MONAI bundle's own rule (whole array, see above)
        with clock.timed("clean_components"):
            labels = keep_largest_components(np.asarray(labels[...]), post, nodata)
        processed = True
    if config.outputs.min_object_size > 0 or config.outputs.keep_largest:
        with clock.timed("clean_components"):
            labels = _cleaned(labels, store, config)
        processed = True
    meta = scene.meta
    tags = {"TILEWISE_MODEL": bundle.config.name, "TILEWISE_MODEL_HASH": bundle.hash}
    if fmt == "geotiff":
        from pipeline.formats.cog import write_cog_labels, write_cog_probabilities

        write_cog_labels = clock.wrap("labels", write_cog_labels)
        write_cog_probabilities = clock.wrap("probabilities", write_cog_probabilities)

        write_cog_labels(
            labels,
            paths["labels"],
            meta=meta,
            class_names=names,
            class_colors=colors,
            nodata=nodata,
            overwrite=overwrite,
            tags=tags,
        )
        if probs is not None:
            write_cog_probabilities(
                probs, paths["probabilities"], meta=meta, class_names=names, overwrite=overwrite, tags=tags
            )
    elif fmt == "nifti":
        from pipeline.formats.nifti_writer import write_nifti_labels, write_nifti_probabilities

        write_nifti_labels = clock.wrap("labels", write_nifti_labels)
        write_nifti_probabilities = clock.wrap("probabilities", write_nifti_probabilities)

        native = scene.to_native_labels(np.asarray(labels[...]))
        write_nifti_labels(
            native, paths["labels"], scene=scene, class_names=names, class_colors=colors, overwrite=overwrite
        )
        if probs is not None:
            stored = np.asarray(probs[...])  # the work store keeps round(p * 255) as uint8
            stored = stored.astype(np.float32) / 255 if stored.dtype == np.uint8 else stored
            scores = scene.to_native_scores(stored)
            write_nifti_probabilities(scores, paths["probabilities"], scene=scene, overwrite=overwrite)
    elif fmt == "zarr":
        from pipeline.formats.zarr_writer import write_geo_zarr, write_ome_zarr_labels

        write_geo_zarr = clock.wrap("labels", write_geo_zarr)
        write_ome_zarr_labels = clock.wrap("labels", write_ome_zarr_labels)

        if isinstance(meta, GeoMeta):
            write_geo_zarr(
                labels,
                paths["labels"],
                meta=meta,
                class_names=names,
                class_colors=colors,
                nodata=nodata,
                overwrite=overwrite,
            )
        else:
            spacing = meta.spacing if isinstance(meta, VolumeMeta) else None
            if getattr(scene, "crop", None) is not None:  # nnU-Net's crop: pad back on the file's grid
                labels, spacing = scene.to_native_labels(np.asarray(labels[...])), scene.native_spacing
            # NIfTI scenes are (X, Y, Z) in the engine; zarr scenes keep their own axis names
            axes = getattr(scene, "axes", None) or ("xyz"[: len(labels.shape)] if spacing else None)
            if axes is not None and len(axes) != len(labels.shape):
                axes = axes[-len(labels.shape) :]
            write_ome_zarr_labels(
                labels,
                paths["labels"],
                class_names=names,
                class_colors=colors,
                spacing=spacing,
                axes=axes,
                overwrite=overwrite,
            )
        if probs is not None:
            import zarr

            from pipeline.atomic import atomic_path

            with (
                clock.timed("probabilities"),
                atomic_path(paths["probabilities"], overwrite=overwrite) as tmp,
            ):
                out = zarr.create_array(store=str(tmp), shape=probs.shape, dtype="uint8", chunks=probs.chunks)
                out[...] = probs[...]
                out.attrs["class_names"] = list(names)
    if "polygons" in paths and isinstance(meta, GeoMeta):
        from pipeline.formats.vector import write_polygons

        write_polygons = clock.wrap("polygons", write_polygons)

        write_polygons(
            labels,
            paths["polygons"],
            meta=meta,
            class_names=names,
            class_colors=colors,
            nodata=nodata,
            overwrite=overwrite,
        )
    if "item" in paths and isinstance(meta, GeoMeta):
        from pipeline import __version__
        from pipeline.formats.stac_item import build_item, model_card, write_stac_item

        assets = {k: p for k, p in paths.items() if k not in ("item", "report")}
        assets["report"] = paths["report"]  # written last, but the item names it
        item = build_item(
            paths["item"].name.removesuffix("_item.json"),
            meta=meta,
            shape=tuple(int(n) for n in labels.shape[-2:]),
            nodata=nodata,
            outputs=assets,
            model=model_card(bundle),
            source=redact(source),
            source_item=source_item,
            acquired=getattr(scene, "item_datetime", None),  # a STAC input's own acquisition time
            software_version=__version__,
        )
        write_stac_item(paths["item"], item, overwrite=overwrite)
    if "quicklook" in paths:
        from pipeline.formats.quicklook import write_quicklook

        write_quicklook = clock.wrap("quicklook", write_quicklook)

        look_scene, look_labels = scene, labels
        if canvas is not None:  # the engine grid, decimated; labels changed after the merge resampled
            look_scene = CanvasScene.of(engine_scene, canvas)
            look_labels = sample_labels(labels, canvas.axes) if processed else canvas.labels
        write_quicklook(
            look_scene,
            look_labels,
            paths["quicklook"],
            class_colors=colors,
            nodata=nodata,
            overwrite=overwrite,
        )
    if timings is not None:
        timings.update({f"{name}_s": seconds for name, seconds in clock.as_dict().items()})

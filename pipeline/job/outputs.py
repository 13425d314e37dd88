"""Turn a scene's finished work store into the files users open: COG, NIfTI, Zarr, GPKG, PNG.

Every writer renames into place atomically; the order puts the labels first so a crash part-way
leaves complete files only (and no report, so a rerun redoes the outputs).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.sinks import activate
from pipeline.errors import redact
from pipeline.execution.stages import Stages
from pipeline.execution.thumbnail import Canvas, CanvasScene, sample_labels
from pipeline.execution.workstore import WorkStore, gdal_name
from pipeline.formats.resample import NativeView, ResampledGeoScene
from pipeline.formats.scene import GeoMeta, VolumeMeta
from pipeline.job.config import JobConfig
from pipeline.job.inversion import inverted_activation, inverts_scores


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


def _cleaned(labels: Any, store: WorkStore, config: JobConfig, mapper: Any = None) -> Any:
    """The labels with small (or all but the largest) components relabelled, block by block into the
    work store (flat memory; identical to ``remove_small_objects`` on the whole array, any chunking).
    ``mapper`` (the executor's ``map``) runs the per-block passes where the blocks are; labels held in
    this process's memory (an in-memory rule ran first) are cleaned on its own threads."""
    from pipeline.execution.components import clean_components

    out = _store_like(labels, store, "cleaned.zarr")
    src = labels if hasattr(labels, "chunks") else _Chunked(labels, out.chunks)
    if isinstance(labels, np.ndarray):
        mapper = None
    clean_components(
        src,
        out,
        min_size=config.outputs.min_object_size,
        keep_largest=config.outputs.keep_largest,
        nodata=config.outputs.nodata_label,
        mapper=mapper,
    )
    return out


def _store_like(labels: Any, store: WorkStore, name: str) -> Any:
    """A uint8 array in the work store, shaped as ``labels``, chunked as the store's blocks, in the
    Zarr v2 layout GDAL reads straight into the COG (``workstore.gdal_zarr``)."""
    from pipeline.execution.workstore import gdal_zarr

    chunks = store.labels("r").chunks[-len(labels.shape) :]
    return gdal_zarr(tuple(labels.shape), tuple(chunks), store.root / name)


class _Chunked:
    """A sliceable array (a native-grid view) with the chunk grid the clean-up walks."""

    def __init__(self, array: Any, chunks: tuple[int, ...]) -> None:
        self.array, self.chunks, self.shape = array, chunks, tuple(array.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.array[key])


def _largest(labels: Any, store: WorkStore, post: Any, nodata: int, mapper: Any = None) -> Any:
    """A MONAI bundle's ``KeepLargestConnectedComponentd``, block by block into the work store (flat
    memory; identical to MONAI's transform on the whole array, any chunking); ``mapper`` runs the
    per-block passes where the blocks are, as for ``_cleaned``."""
    from pipeline.execution.largest import Rule, keep_largest

    out = _store_like(labels, store, "largest.zarr")
    src = labels if hasattr(labels, "chunks") else _Chunked(labels, out.chunks)
    keep_largest(src, out, Rule.of(post, nodata), mapper=None if isinstance(labels, np.ndarray) else mapper)
    return out


def _activator(activation: str) -> Any:
    """``activation`` as the in-place function the scene runs on scores back on its grid (None: none)."""
    return None if activation == "none" else functools.partial(activate, activation=activation)


def _inverted_labels(
    scene: Any, scores: Any, nearest: np.ndarray, post: Any, nodata: int, activation: str
) -> np.ndarray:
    """Labels on the input's grid as a MONAI bundle with ``Invertd(nearest_interp=False)`` before
    ``AsDiscreted`` makes them: the scores interpolated linearly onto the input's grid (then activated,
    when its ``Activationsd`` comes after ``Invertd``), then the argmax (voxels no window covered keep
    ``nodata``); nnU-Net's export is the same with its orders, on its logits. The labels are
    whole-array, as the NIfTI writer is; the scores are read slab by slab."""
    from pipeline.execution.largest import Rule, keep_largest

    labels = scene.to_native_argmax(scores, activation=_activator(activation))
    labels[nearest == nodata] = nodata
    if post is not None and post.keep_largest:
        out = np.empty_like(labels)
        keep_largest(labels, out, Rule.of(post, nodata))
        labels = out
    return labels


def _copy_by_chunks(src: Any, dst: Any) -> None:
    """Copy chunk by chunk on every core (each chunk has one writer): a chunk per thread is held, not
    the whole array (``dst[...] = src[...]`` held all of it)."""
    import itertools

    from pipeline.execution.mappers import thread_map

    def one(starts: tuple[int, ...]) -> None:
        key = tuple(slice(s, s + c) for s, c in zip(starts, dst.chunks, strict=True))
        dst[key] = np.asarray(src[key])

    grid = itertools.product(*(range(0, n, c) for n, c in zip(dst.shape, dst.chunks, strict=True)))
    thread_map()(one, list(grid))


def _cog_sources(array: Any, folder: Path, nodata: int | None, clock: Stages, mapper: Any) -> dict[str, Any]:
    """What the COG writer reads an array from: GDAL straight from the work store's Zarr, with the
    overview levels (MODE labels, AVERAGE probabilities) built tile by tile on the workers or every
    core when each level halves exactly, else GDAL builds them on every core; a view or an older
    (Zarr v3) store streams through this process as before."""
    from pipeline.execution.pyramid import build_label_pyramid, halves_exactly, level_sources

    source = gdal_name(array)
    if source is None:
        return {}
    if not halves_exactly(tuple(array.shape[-2:])):
        return {"gdal_source": source}
    with clock.timed("overviews"):
        levels = build_label_pyramid(array, folder, nodata, mapper)
    return {"gdal_source": source, "overview_sources": level_sources(levels)}


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
    mapper: Any = None,
    tile_mapper: Any = None,
) -> None:
    """Write every output; the quicklook comes from ``canvas`` (the block pass's decimated scene) when
    there is one, so nothing here reads the input again. ``timings`` receives seconds per output;
    ``mapper(fn, calls)`` (the executor's ``map``: ``fn(*args)`` per call) runs per-block post-processing
    where the blocks ran; ``tile_mapper(fn, items)`` (a Dask executor's ``map_items``: ``fn(item)``) runs
    overview tiles and polygon strips on the workers, else this machine's cores or processes do."""
    clock = Stages()
    names, colors = bundle.class_names, bundle.class_colors
    nodata = config.outputs.nodata_label
    overwrite = config.outputs.overwrite
    labels: Any = store.labels("r")
    scores: Any = store.probabilities("r")  # exact (float) when labels are inverted from them
    probs: Any = scores if config.outputs.probabilities else None
    invert = inverts_scores(bundle, scene)
    late = inverted_activation(bundle, invert)  # Activationsd after Invertd: on the input's grid
    engine_scene, processed = scene, False
    if isinstance(scene, ResampledGeoScene):  # engine grid at the bundle's GSD: write on the input's grid
        labels = NativeView(labels, scene.native.spatial_shape)
        probs = None if probs is None else NativeView(probs, scene.native.spatial_shape)
        scene = scene.native
    post = getattr(bundle.config, "postprocess", None)
    if post is not None and post.keep_largest and not invert:  # a MONAI bundle's own rule, block-wise
        with clock.timed("clean_components"):
            labels = _largest(labels, store, post, nodata, mapper)
        processed = True
    if config.outputs.min_object_size > 0 or config.outputs.keep_largest:
        with clock.timed("clean_components"):
            labels = _cleaned(labels, store, config, mapper)
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
            **_cog_sources(labels, store.root / "overviews" / "labels", nodata, clock, tile_mapper),
        )
        if probs is not None:
            write_cog_probabilities(
                probs,
                paths["probabilities"],
                meta=meta,
                class_names=names,
                overwrite=overwrite,
                tags=tags,
                **_cog_sources(probs, store.root / "overviews" / "probs", None, clock, tile_mapper),
            )
    elif fmt == "nifti":
        from pipeline.formats.nifti_writer import write_nifti_labels, write_nifti_probabilities

        write_nifti_labels = clock.wrap("labels", write_nifti_labels)
        write_nifti_probabilities = clock.wrap("probabilities", write_nifti_probabilities)

        native = _native_labels(scene, labels, scores if invert else None, post, nodata, late)
        write_nifti_labels(
            native, paths["labels"], scene=scene, class_names=names, class_colors=colors, overwrite=overwrite
        )
        if probs is not None:
            stored = np.asarray(probs[...])  # the work store keeps round(p * 255) as uint8
            stored = stored.astype(np.float32) / 255 if stored.dtype == np.uint8 else stored
            scores = scene.to_native_scores(stored, _activator(late))
            # exact float scores (inverted from the work store's float32) stay float32: rounding them to
            # the uint8 step (1/510) would add to what the way back already costs
            kind = np.float32 if invert else np.uint8
            write_nifti_probabilities(
                scores, paths["probabilities"], scene=scene, dtype=kind, overwrite=overwrite
            )
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
                native = _native_labels(scene, labels, scores if invert else None, post, nodata, late)
                labels, spacing = native, scene.native_spacing
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
                if getattr(scene, "crop", None) is not None:  # as the labels: padded back on the file's grid
                    native = _native_uint8_scores(scene, probs, late)
                    out = zarr.create_array(store=str(tmp), shape=native.shape, dtype="uint8")
                    out[...] = native
                else:
                    chunks = (probs.shape[0], *probs.chunks[1:])  # all classes in a chunk, as it always was
                    out = zarr.create_array(store=str(tmp), shape=probs.shape, dtype="uint8", chunks=chunks)
                    _copy_by_chunks(probs, out)
                out.attrs["class_names"] = list(names)
    if "polygons" in paths and isinstance(meta, GeoMeta):
        from pipeline.execution.mappers import ProcessMap
        from pipeline.formats.vector import write_polygons

        write_polygons = clock.wrap("polygons", write_polygons)
        # strips go to other processes only when the labels travel as a path (a Zarr array), never pixels
        local = ProcessMap() if tile_mapper is None else None
        try:
            write_polygons(
                labels,
                paths["polygons"],
                meta=meta,
                class_names=names,
                class_colors=colors,
                nodata=nodata,
                overwrite=overwrite,
                mapper=(tile_mapper or local) if gdal_name(labels) is not None else None,
            )
        finally:
            if local is not None:
                local.close()
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


def _native_labels(
    scene: Any, labels: Any, scores: Any, post: Any, nodata: int, activation: str
) -> np.ndarray:
    """Labels on the file's voxel grid: the engine's by nearest neighbour, or, given the stored
    ``scores`` (a bundle that inverts them), as MONAI's Invertd then AsDiscreted and nnU-Net's export
    make them (with the keep-largest rule on that grid)."""
    native = scene.to_native_labels(np.asarray(labels[...]))
    return native if scores is None else _inverted_labels(scene, scores, native, post, nodata, activation)


def _native_uint8_scores(scene: Any, probs: Any, activation: str) -> np.ndarray:
    """Stored scores on the file's voxel grid, as ``to_native_scores`` maps them (activated there when
    they are logits; outside nnU-Net's crop: background 1, the other classes 0), as ``round(p * 255)``."""
    stored = np.asarray(probs[...])
    stored = stored.astype(np.float32) / 255 if stored.dtype == np.uint8 else stored
    scores = scene.to_native_scores(stored, _activator(activation))
    return np.rint(np.clip(scores, 0.0, 1.0) * 255.0).astype(np.uint8)

"""Turn a scene's finished work store into the files users open: COG, NIfTI, Zarr, GPKG, PNG.

Every writer renames into place atomically; the order puts the labels first so a crash part-way
leaves complete files only (and no report, so a rerun redoes the outputs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.execution.workstore import WorkStore
from pipeline.formats.resample import NativeView, ResampledGeoScene
from pipeline.formats.scene import GeoMeta, VolumeMeta
from pipeline.job.config import JobConfig


def remove_small_objects(labels: np.ndarray, min_size: int, nodata_label: int) -> np.ndarray:
    """Relabel connected components smaller than ``min_size`` pixels with their most common neighbour
    class (so no holes of nodata appear). Works on the whole label array; meant for moderate scenes."""
    from scipy import ndimage

    out = labels.copy()
    for cls in np.unique(labels):
        if cls == nodata_label:
            continue
        comp, n = ndimage.label(labels == cls)
        if n == 0:
            continue
        sizes = np.bincount(comp.ravel())
        small = np.flatnonzero(sizes < min_size)
        small = small[small > 0]
        for idx in small:
            region = comp == idx
            ring = ndimage.binary_dilation(region) & ~region
            neighbours = labels[ring]
            neighbours = neighbours[(neighbours != nodata_label) & (neighbours != cls)]
            if neighbours.size:
                out[region] = np.bincount(neighbours).argmax()
    return out


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
    scene: Any, store: WorkStore, paths: dict[str, Path], fmt: str, bundle: Any, config: JobConfig
) -> None:
    names, colors = bundle.class_names, bundle.class_colors
    nodata = config.outputs.nodata_label
    overwrite = config.outputs.overwrite
    labels: Any = store.labels("r")
    probs: Any = store.probabilities("r")
    if isinstance(scene, ResampledGeoScene):  # engine grid at the bundle's GSD: write on the input's grid
        labels = NativeView(labels, scene.native.spatial_shape)
        probs = None if probs is None else NativeView(probs, scene.native.spatial_shape)
        scene = scene.native
    post = getattr(bundle.config, "postprocess", None)
    if post is not None and post.keep_largest:
        labels = keep_largest_components(np.asarray(labels[...]), post, nodata)
    if config.outputs.min_object_size > 0:
        labels = remove_small_objects(np.asarray(labels[...]), config.outputs.min_object_size, nodata)
    meta = scene.meta
    tags = {"TILEWISE_MODEL": bundle.config.name, "TILEWISE_MODEL_HASH": bundle.hash}
    if fmt == "geotiff":
        from pipeline.formats.cog import write_cog_labels, write_cog_probabilities

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

            with atomic_path(paths["probabilities"], overwrite=overwrite) as tmp:
                out = zarr.create_array(store=str(tmp), shape=probs.shape, dtype="uint8", chunks=probs.chunks)
                out[...] = probs[...]
                out.attrs["class_names"] = list(names)
    if "polygons" in paths and isinstance(meta, GeoMeta):
        from pipeline.formats.vector import write_polygons

        write_polygons(
            labels, paths["polygons"], meta=meta, class_names=names, nodata=nodata, overwrite=overwrite
        )
    if "quicklook" in paths:
        from pipeline.formats.quicklook import write_quicklook

        write_quicklook(
            scene, labels, paths["quicklook"], class_colors=colors, nodata=nodata, overwrite=overwrite
        )

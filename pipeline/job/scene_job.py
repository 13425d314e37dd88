"""One scene end-to-end: open, check, plan, execute blocks, write the outputs atomically, report.

A scene's failure is caught here and turned into a one-line reason, so one bad scene never stops the
others. The report is written last: its presence means the scene is complete, and a rerun skips it
unless ``overwrite`` is set.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core.tile_order import ordered_block_size
from pipeline.core.tiling import default_block_size
from pipeline.errors import ConfigError, InputError, OutputError, TilewiseError, redact
from pipeline.execution.preprocess import Preprocessor
from pipeline.formats.kinds import OUTPUT_SUFFIX
from pipeline.formats.qgis_style import qml_path
from pipeline.formats.scene import GeoMeta, VolumeMeta
from pipeline.formats.source import SceneSource
from pipeline.job.config import JobConfig
from pipeline.job.discover import WORK_DIR, mirrored_dir, scene_stem
from pipeline.job.inversion import inverted_activation, inverts_scores
from pipeline.job.leasing import scene_lease
from pipeline.job.memory import Sums, peak_rss_mb, plan_peak_mb, rss_mb
from pipeline.job.report import class_counts, class_table, pixel_area_m2, write_report
from pipeline.job.results import SceneResult, failed_result

if TYPE_CHECKING:  # the block machinery imports torch and zarr: loaded when a scene runs, not on plan
    from pipeline.execution.local import Executor, Progress
    from pipeline.execution.tasks import SceneTask
    from pipeline.execution.workstore import WorkStore

_STORAGE_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}  # not a scene's fault: OutputError
LABEL_SUFFIX = {fmt: f"_labels{suffix}" for fmt, suffix in OUTPUT_SUFFIX.items()}
ALLOWED_FORMATS = {
    "geotiff": {"geotiff", "zarr"},
    "stac": {"geotiff", "zarr"},
    "nifti": {"nifti", "zarr"},
    "zarr": {"zarr", "geotiff"},
}
AUTO_FORMAT = {"stac": "geotiff"}  # otherwise the input's own kind


def output_paths(out_dir: Path, stem: str, fmt: str, config: JobConfig, geo: bool) -> dict[str, Path]:
    """The scene's final files, all directly inside ``out_dir`` (anything else is refused); with
    ``nnunet_names`` the labels are ``CASE.nii.gz`` for ``CASE_0000.nii.gz`` as nnU-Net names them."""
    labels = f"{stem}{LABEL_SUFFIX[fmt]}"
    if config.outputs.nnunet_names:
        stem = stem[:-5] if len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit() else stem
        labels = f"{stem}{OUTPUT_SUFFIX[fmt]}"
    paths = {"labels": out_dir / labels, "report": out_dir / f"{stem}_report.json"}
    if fmt == "geotiff":
        paths["style"] = qml_path(paths["labels"])  # QGIS's style sidecar, written with the labels
    if geo:
        paths["item"] = out_dir / f"{stem}_item.json"  # a STAC Item for the outputs
    if config.outputs.probabilities:
        suffix = OUTPUT_SUFFIX[fmt]
        paths["probabilities"] = out_dir / f"{stem}_probabilities{suffix}"
    if config.outputs.polygons and geo:
        paths["polygons"] = out_dir / f"{stem}_polygons.gpkg"
    if config.outputs.quicklook:
        paths["quicklook"] = out_dir / f"{stem}_quicklook.png"
    for path in paths.values():
        if path.parent != out_dir or path.name in (".", "..") or "\0" in path.name:
            raise OutputError(f"scene name {stem!r} would write outside the output folder", path=str(path))
    return paths


def open_options(
    source: SceneSource, bundle: Any, work_dir: Path, bands: dict[str, str] | None = None
) -> SceneSource:
    """Reader options the bundle implies (orientation, spacing/GSD, a cache for big .nii.gz; for a
    STAC Item its channels, with ``bands`` mapping channel -> asset)."""
    cfg = bundle.config
    spacing = tuple(cfg.target_spacing) if cfg.target_spacing else None
    if source.kind == "stac":
        gsd = spacing if spacing and len(spacing) == 2 else None
        mapping = tuple(sorted((bands or {}).items()))
        options = (("channels", tuple(cfg.inputs.channels)), ("bands", mapping), ("target_gsd", gsd))
        return SceneSource(source.kind, source.uris, options)
    if source.kind == "geotiff" and spacing and len(spacing) == 2:
        return SceneSource(source.kind, source.uris, (("target_gsd", spacing),))
    if source.kind != "nifti":
        return source
    options = (("orientation", cfg.orientation), ("target_spacing", spacing), ("cache_dir", str(work_dir)))
    if spacing and cfg.spacing_grid != "extent":
        options += (("spacing_grid", cfg.spacing_grid),)
    if spacing and getattr(cfg, "resampling", None) is not None:  # nnU-Net's own resampling
        options += (("resampling", cfg.resampling.as_tuple()),)
    return SceneSource(source.kind, source.uris, options)


def plan_scene(scene: Any, bundle: Any, config: JobConfig) -> tuple[tuple[int, ...], float, tuple[int, ...]]:
    """Patch size, overlap and block size for a scene (config over bundle defaults)."""
    spatial = tuple(int(n) for n in scene.shape[1:])
    dims = bundle.config.spatial_dims
    if len(spatial) != dims:
        raise InputError(
            f"scene is {len(spatial)}-D {spatial} but bundle {bundle.config.name} is a {dims}-D model"
        )
    roi = tuple(config.tiling.patch_size or bundle.config.patch_size)
    if len(roi) == 1:
        roi = roi * dims
    if len(roi) != dims:
        raise ConfigError(f"patch size {list(roi)} does not have {dims} entries")
    overlap = config.tiling.overlap if config.tiling.overlap is not None else bundle.config.overlap
    if config.tiling.block_size:
        block = tuple(config.tiling.block_size)
        block = block * dims if len(block) == 1 else block
        block = tuple(max(b, r) for b, r in zip(block, roi, strict=True))
    else:
        budget = config.tiling.memory_budget_mb * 2**20
        ordered = accumulation(bundle.config)
        if ordered:  # nnU-Net's float16 sums: slabs across its first axis, where no window is kept apart
            channels = bundle.num_classes * ordered["fold_groups"]
            block = ordered_block_size(spatial, roi, channels, ordered["accumulate_order"], budget)
        else:
            block = default_block_size(spatial, roi, bundle.num_classes, budget)
    return roi, float(overlap), block


def _is_bundle_folder(path: Any) -> bool:
    return (Path(path) / "model.yaml").is_file()


def window_settings(bundle: Any, config: JobConfig, inverted: bool = False) -> dict[str, Any]:
    """Blend, sigma and batch size: what the job sets, else what the bundle carries (a MONAI bundle's
    inferer), else the job's defaults; and where the output activation runs (nowhere here when it runs
    on scores ``inverted`` onto the input's grid: the outputs apply it, ``inverted_activation``)."""
    cfg, tiling, execution = bundle.config, config.tiling, config.execution

    def pick(section: Any, key: str) -> Any:
        ours = getattr(cfg, key, None)
        return ours if key not in section.model_fields_set and ours is not None else getattr(section, key)

    blended = getattr(cfg, "activation_stage", "window") in ("blended", "inverted")
    late = inverted_activation(bundle, inverted) != "none"
    return {
        "blend": pick(tiling, "blend"),
        "sigma_scale": pick(tiling, "sigma_scale"),
        "batch_size": pick(execution, "batch_size"),
        "activation": "none" if blended else cfg.output_activation,
        "score_activation": cfg.output_activation if blended and not late else "none",
    }


def accumulation(cfg: Any) -> dict[str, Any]:
    """nnU-Net's float16 sums for a model that asks for them (``accumulate: nnunet``): its windows are
    added in the network's axis order, and an ensemble's folds come out side by side, summed apart."""
    sums = Sums.of(cfg, 0)
    if not sums.half:
        return {}
    return {"accumulate_order": tuple(int(a) for a in cfg.architecture["axes"]), "fold_groups": sums.folds}


def _reported_input(report: Path) -> str | None:
    """The input a finished scene's report names (None if unreadable)."""
    try:
        value = json.loads(report.read_text()).get("input")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _same_input(reported: str, uri: str) -> bool:
    """Whether a report's input is this scene; True when it cannot tell (input moved or relative)."""
    if reported == redact(uri):
        return True
    if "://" in reported or "://" in uri:
        return False
    try:
        return os.path.samefile(reported, uri)
    except OSError:
        return True


def work_dir_of(out_dir: Path, source: SceneSource, stem: str) -> Path:
    key = hashlib.sha1(source.uri.encode()).hexdigest()[:10]
    return out_dir / WORK_DIR / f"{stem}-{key}"


def run_scene(
    source: SceneSource,
    bundle: Any,
    config: JobConfig,
    out_dir: Path,
    executor: Executor,
    *,
    progress: Progress | None = None,
    debug: bool = False,
) -> SceneResult:
    """Run one scene; never raises for a scene-level problem (unless ``debug``)."""
    stem = scene_stem(source)
    t0 = time.perf_counter()
    result = SceneResult(source.uri, stem, "failed")
    try:
        try:
            with scene_lease(work_dir_of(out_dir, source, stem), config.execution, result) as held:
                if held:
                    _run(source, bundle, config, out_dir, executor, progress, result)
        except OSError as exc:
            if isinstance(exc, TilewiseError) or exc.errno not in _STORAGE_FULL:
                raise
            reason = f"cannot write under {out_dir}: {exc.strerror or exc}"
            raise OutputError(reason, path=source.uri) from exc
    except Exception as exc:
        if debug:
            raise
        return failed_result(source.uri, stem, exc, time.perf_counter() - t0)
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


def _run(
    source: SceneSource,
    bundle: Any,
    config: JobConfig,
    out_dir: Path,
    executor: Executor,
    progress: Progress | None,
    result: SceneResult,
) -> None:
    from pipeline.execution.tasks import SceneTask
    from pipeline.execution.workstore import WorkStore

    work_dir = work_dir_of(out_dir, source, result.stem)  # the lease's folder: keyed at the output root
    out_dir = out_dir.joinpath(*mirrored_dir(source.uri, config.input or "").parts)
    source = open_options(source, bundle, work_dir / "cache", config.inputs.bands)
    auto = AUTO_FORMAT.get(source.kind, source.kind)
    fmt = config.outputs.format if config.outputs.format != "auto" else auto
    if fmt not in ALLOWED_FORMATS[source.kind]:
        raise ConfigError(f"cannot write {source.kind} input as {fmt}", path=source.uri)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    from pipeline.execution.scene_passes import open_cropped

    source, scene = open_cropped(source, bundle.config)
    try:
        geo = isinstance(scene.meta, GeoMeta)
        if fmt == "geotiff" and not geo:
            raise ConfigError("GeoTIFF output needs a georeferenced input", path=source.uri)
        paths = output_paths(out_dir, result.stem, fmt, config, geo)
        if paths["report"].exists() and not config.outputs.overwrite:
            other = _reported_input(paths["report"])
            if other is not None and not _same_input(other, source.uri):  # a.tif, sub/a.tif: one name
                raise InputError(
                    f"its outputs ({paths['labels'].name}...) already hold the results of {other}; "
                    "rename one of the two inputs, or use another output folder",
                    path=source.uri,
                )
            result.status, result.reason = "skipped", "outputs exist (use --overwrite)"
            result.outputs = {k: str(v) for k, v in paths.items() if v.exists()}
            return
        roi, overlap, block = plan_scene(scene, bundle, config)  # dimensionality first: the deeper mismatch
        pre = Preprocessor.from_bundle(bundle, scene)
        invert = inverts_scores(bundle, scene)
        timings["open_s"] = time.perf_counter() - t
        task = SceneTask(
            source=source,
            bundle_path=str(bundle.path),
            bundle_hash=bundle.hash,
            work_dir=str(work_dir),
            spatial_shape=tuple(int(n) for n in scene.shape[1:]),
            patch_size=roi,
            overlap=overlap,
            block_size=block,
            classes=bundle.num_classes,
            preprocessor=pre,
            device=config.execution.device,
            amp=config.execution.amp,
            channels_last=config.execution.channels_last,
            compile=config.execution.compile,
            tta=config.execution.tta,
            # how a worker reopens the model; a tilewise bundle (one saved for the workers included)
            # takes none, the job's choices (folds, ...) are already in it
            model_options=()
            if _is_bundle_folder(bundle.path)
            else tuple(sorted(config.model_options.items())),
            trust_pickle=config.trust_pickle and not _is_bundle_folder(bundle.path),
            **window_settings(bundle, config, invert),
            probabilities=config.outputs.probabilities or invert,
            scores_dtype="float32" if invert else "uint8",
            nodata_label=config.outputs.nodata_label,
            grid=bundle.config.grid,
            **accumulation(bundle.config),
        )
        state = {
            "uri": source.uri,
            "bundle": bundle.hash,
            "config": config.hash_fields(),
            "roi": roi,
            "overlap": overlap,
            "block": block,
            "shape": task.spatial_shape,
        }
        if invert:
            state["scores"] = task.scores_dtype
        store = WorkStore(work_dir)
        resumed = store.prepare(
            state, task.spatial_shape, block, task.classes, task.probabilities, task.scores_dtype
        )
        estimate = plan_peak_mb(scene, bundle, config, roi, block, baseline_mb=rss_mb(), overlap=overlap)
        t = time.perf_counter()
        stats = executor.run(task, progress, scene=scene)
        timings["blocks_s"] = time.perf_counter() - t
        timings.update({f"{name}_s": seconds for name, seconds in stats.stages.items()})
        t = time.perf_counter()
        from pipeline.job.outputs import write_outputs

        final_cfg = config
        if resumed:  # files without a report are this scene's own, from a run killed while writing them
            final_cfg = config.model_copy(
                update={"outputs": config.outputs.model_copy(update={"overwrite": True})}
            )
        from pipeline.execution.thumbnail import load_canvas

        canvas = load_canvas(store.root, task.spatial_shape, scene.shape[0], scene.dtype)
        item_href = source.uri if source.kind == "stac" else None
        write_outputs(scene, store, paths, fmt, bundle, final_cfg, source=source.uri, source_item=item_href,
                      canvas=canvas, timings=timings, mapper=getattr(executor, "map", None),
                      tile_mapper=getattr(executor, "map_items", None))  # fmt: skip
        timings["outputs_s"] = time.perf_counter() - t
        report = _report(source, scene, bundle, config, task, store, stats, resumed, paths, timings, canvas)
        report.update(result.report)  # a lease taken over from a dead run (pipeline.job.leasing)
        # this process's figures; on Dask the blocks ran in the workers (see report["execution"])
        report["memory"] = {"plan_peak_rss_mb": round(estimate), "peak_rss_mb": round(peak_rss_mb())}
        write_report(paths["report"], report)
        result.status, result.report = "ok", report
        result.outputs = {k: str(v) for k, v in paths.items()}
        result.windows, result.pixels = stats.windows, int(np.prod(task.spatial_shape))
        if not config.outputs.keep_work:
            store.remove()
    finally:
        scene.close()


def _report(
    source: SceneSource,
    scene: Any,
    bundle: Any,
    config: JobConfig,
    task: SceneTask,
    store: WorkStore,
    stats: Any,
    resumed: bool,
    paths: dict[str, Path],
    timings: dict[str, float],
    canvas: Any = None,
) -> dict[str, Any]:
    if canvas is not None:  # tallied by the merges: no pass over the label array
        counts = [int(c) for c in canvas.counts[: task.classes]]
        nodata = int(canvas.counts[task.nodata_label])
    else:
        counts, nodata = class_counts(store.labels("r"), task.classes, task.nodata_label)
    meta = scene.meta
    if isinstance(meta, GeoMeta):
        area = pixel_area_m2(meta, *task.spatial_shape[:2])
        table = class_table(bundle.class_names, counts, "area_ha", None if area is None else area / 1e4)
    elif isinstance(meta, VolumeMeta):
        voxel_mm3 = float(np.prod(meta.spacing))
        table = class_table(bundle.class_names, counts, "volume_ml", voxel_mm3 / 1000.0)
    else:
        table = class_table(bundle.class_names, counts, "", None)
    plan = task.plan
    return {
        "input": redact(source.uri),
        "inputs": [redact(u) for u in source.uris],
        "shape": list(scene.shape),
        "model": {"name": bundle.config.name, "path": str(bundle.path), "hash": bundle.hash},
        "config": config.model_dump(mode="json", exclude={"input", "output", "model"}),
        "plan": {
            "patch_size": list(task.patch_size),
            "overlap": task.overlap,
            "block_size": list(task.block_size),
            "blocks": int(np.prod(plan.grid_shape)),
            "windows_in_grid": plan.window_count,
        },
        "windows_computed": stats.windows,
        "windows_skipped_nodata": stats.skipped,
        "resumed": resumed,
        "execution": stats.extra,
        "orchestration": "prefect" if config.execution.orchestrator == "prefect" else "none",
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "classes": table,
        "nodata_pixels": nodata,
        "outputs": {k: str(v) for k, v in paths.items()},
        "host": platform.node(),
    }

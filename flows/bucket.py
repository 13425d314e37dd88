"""The bucket flow: segment what is new under ``s3://bucket/prefix`` and write it under an output prefix.

Each run lists the input prefix, groups objects into scenes (a raster, a NIfTI channel set, a Zarr
store), and skips every scene the manifest says was already done with this bundle and config.
Rasters stream through GDAL's ``/vsis3/``; NIfTI is copied into the scene's work folder by its reader.
Outputs are written to a local staging folder, exactly as the folder job writes them, then uploaded
under the output prefix at the key mirroring the input's (report last), and the manifest and the
STAC Collection (``collection.json``, linking each scene's item) are updated after every scene.
The run ends Failed when any scene failed; the reasons are in the manifest and in the run's
artifacts.
"""

import json
import posixpath
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from prefect import flow, task
from prefect.utilities.annotations import quote

from flows.artifacts import RunSummary
from flows.catalogue import CollectionStore
from flows.leases import S3LeaseStore
from flows.manifest import Manifest, ManifestEntry, ManifestStore, config_hash, fingerprint
from flows.scene_runs import (
    SCENE_TASK_OPTIONS,
    TransientSceneError,
    finish,
    is_transient,
    refuse,
    report_result,
    run_flow,
    run_scene_once,
    run_scene_task,
)
from flows.storage import (
    ObjectInfo,
    S3Prefix,
    UnsafeKey,
    gdal_s3_env,
    list_objects,
    s3_filesystem,
    safe_key,
    safe_relative,
    upload_outputs,
)
from pipeline.errors import ConfigError, InputError, TilewiseError, redact
from pipeline.execution.lease import Busy, acquire
from pipeline.execution.local import Executor, Progress
from pipeline.formats.source import SceneSource, kind_of
from pipeline.job.config import JobConfig
from pipeline.job.discover import WORK_DIR, scene_stem
from pipeline.job.results import SceneResult, failure_reason
from pipeline.job.skeleton import ProgressFactory, make_executor, run_each, scenes_in_flight


@dataclass(frozen=True)
class BucketScene:
    """One scene found under the input prefix; ``problem`` says why it is refused (unsafe key)."""

    uri: str
    kind: str
    uris: tuple[str, ...]
    rel_dir: str  # the scene's folder relative to the input prefix ("" at the top)
    objects: tuple[ObjectInfo, ...]
    fingerprint: str
    problem: str = ""

    @property
    def source(self) -> SceneSource:
        return SceneSource(self.kind, self.uris)

    @property
    def stem(self) -> str:
        return scene_stem(self.source)


def check_bucket_config(config: JobConfig) -> tuple[S3Prefix, S3Prefix]:
    """Input and output prefixes of a bucket job; outputs may sit inside the input, not the reverse."""
    if not (config.input and config.output and config.model):
        raise ConfigError("input, output and model are all required")
    src, dst = S3Prefix.parse(config.input), S3Prefix.parse(config.output)
    if src.bucket == dst.bucket and (src.prefix == dst.prefix or dst.contains(src.prefix)):
        raise ConfigError("the output prefix must not contain the input prefix (outputs would be read "
                          "back as inputs)", path=config.output)  # fmt: skip
    if "://" in config.model:
        raise ConfigError("the bundle must be a local folder (mount or sync it next to the worker)",
                          path=config.model)  # fmt: skip
    return src, dst


def _hidden(rel: str) -> bool:
    """Dot-folders and dot-files (ours: .tilewise, .tilewise-work) are not inputs; ``..`` is not hidden,
    it is refused."""
    return any(p.startswith(".") and p not in (".", "..") for p in rel.split("/")) or WORK_DIR in rel


def _scene(
    where: S3Prefix, kind: str, root_key: str, keys: list[str], members: list[ObjectInfo]
) -> BucketScene:
    rel_root = where.relative(root_key)
    problem = ""
    try:
        safe_relative(rel_root)
    except UnsafeKey as exc:
        problem = f"refused: {exc}"
    uris = tuple(where.key_uri(k) for k in keys)
    rel_dir = posixpath.dirname(rel_root)
    fp = fingerprint(members, root_key)
    return BucketScene(uris[0], kind, uris, rel_dir, tuple(members), fp, problem)


def find_scenes(objects: list[ObjectInfo], src: S3Prefix, dst: S3Prefix) -> list[BucketScene]:
    """Group the listing into scenes: rasters, NIfTI files or channel sets, Zarr stores."""
    from pipeline.formats.nifti_reader import group_channel_files

    by_key = {o.key: o for o in objects if not (dst.bucket == src.bucket and dst.contains(o.key))}
    scenes: list[BucketScene] = []
    zarr_roots: dict[str, list[ObjectInfo]] = {}
    niftis: list[str] = []
    for key, obj in by_key.items():
        rel = src.relative(key)
        if _hidden(rel):
            continue
        parts = key.split("/")
        zarr_at = next((i for i, p in enumerate(parts) if kind_of(p) == "zarr"), None)
        if zarr_at is not None:
            zarr_roots.setdefault("/".join(parts[: zarr_at + 1]), []).append(obj)
        elif kind_of(key) == "nifti":
            niftis.append(key)
        elif kind_of(key) in ("geotiff", "stac"):  # a raster, or a STAC Item of single-band assets
            scenes.append(_scene(src, str(kind_of(key)), key, [key], [obj]))
    for group in group_channel_files(niftis):
        scenes.append(_scene(src, "nifti", group[0], group, [by_key[k] for k in group]))
    for root, members in zarr_roots.items():
        scenes.append(_scene(src, "zarr", root, [root], members))
    return sorted(scenes, key=lambda s: s.uri)


@task(name="bucket-scene", **SCENE_TASK_OPTIONS)
def bucket_scene_task(
    scene: BucketScene,
    bundle: Any,
    config: JobConfig,
    stage: str,
    dst: S3Prefix,
    executor: Executor,
    progress: Progress | None = None,
    debug: bool = False,
) -> SceneResult:
    """Run the scene into its staging folder, then upload the outputs (a transient upload error
    retries the task; the staged report makes the retry skip straight to the upload)."""
    stage_dir = Path(stage)
    stage_dir.mkdir(parents=True, exist_ok=True)
    result = run_scene_once(scene.source, bundle, config, stage_dir, executor, progress, debug)
    if result.status == "failed":
        return result
    rel_dir = safe_relative(scene.rel_dir) if scene.rel_dir else PurePosixPath()
    uris = {k: dst.key_uri(safe_key(dst, *rel_dir.parts, Path(v).name)) for k, v in result.outputs.items()}
    report_path = Path(result.outputs["report"])
    report = json.loads(report_path.read_text())
    report["outputs"] = uris
    report_path.write_text(json.dumps(report, indent=2, default=str))
    try:
        upload_outputs(s3_filesystem(), result.outputs, dst, rel_dir)
    except Exception as exc:
        if is_transient(exc) and not debug:
            raise TransientSceneError(
                redact(f"{scene.uri}: upload failed: {type(exc).__name__}: {exc}")
            ) from None
        if debug:
            raise
        result.status, result.reason = "failed", f"{scene.uri}: upload failed: {failure_reason(exc)}"
        return result
    result.status, result.reason, result.outputs, result.report = "ok", "", uris, report
    return result


@contextmanager
def staging(parent: str | None) -> Iterator[Path]:
    """A private local folder for this run's outputs before upload; removed at the end."""
    if parent:
        Path(parent).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tilewise-stage-", dir=parent) as tmp:
        yield Path(tmp)


def _entry(scene: BucketScene, result: SceneResult, bundle_hash: str, cfg_hash: str) -> ManifestEntry:
    from prefect.runtime import flow_run

    status = "refused" if scene.problem else ("ok" if result.status == "ok" else "failed")
    return ManifestEntry(
        input=scene.uri,
        objects=[{"key": o.key, "etag": o.etag, "size": o.size} for o in scene.objects[:50]],
        fingerprint=scene.fingerprint,
        bundle_hash=bundle_hash,
        config_hash=cfg_hash,
        status=status,
        retryable=bool(result.report.get("transient")),
        reason=redact(result.reason),
        outputs=result.outputs if status == "ok" else {},
        seconds=result.seconds,
        flow_run=flow_run.id,
    )


@flow(name="tilewise-bucket", description="Segment new objects under an s3:// prefix; skip what is done.")
def bucket_flow(
    config: JobConfig, staging_dir: str | None = None, reprocess_failed: bool = False, debug: bool = False
) -> RunSummary:
    """Scan the input prefix and process only new or changed scenes (see flows.manifest)."""
    from models.bundle.sources import open_model

    started = time.perf_counter()
    try:
        src, dst = check_bucket_config(config)
        bundle = open_model(config.model)
        fs = s3_filesystem()
        store = ManifestStore(fs, dst)
        manifest = store.load()
        scenes = find_scenes(list_objects(fs, src), src, dst)
    except TilewiseError as exc:
        return refuse(exc, debug)  # type: ignore[return-value]
    except OSError as exc:  # no such bucket, no access, endpoint down: say so without a traceback
        if debug:
            raise
        where = f"{config.input} / {config.output}"
        return refuse(InputError(redact(f"cannot read {where}: {type(exc).__name__}: {exc}")), debug)  # type: ignore[return-value]
    cfg_hash = config_hash(config)

    def needed(s: BucketScene, seen: Manifest) -> bool:
        entry = seen.entries.get(s.uri)
        if reprocess_failed and entry is not None and entry.status == "failed":
            return True
        return seen.needs(s.uri, s.fingerprint, bundle.hash, cfg_hash)

    todo = [s for s in scenes if needed(s, manifest)]
    summary = RunSummary("bucket", dst.uri, listed=len(scenes), unchanged=len(scenes) - len(todo),
                         model=bundle.config.name, bundle_hash=bundle.hash)  # fmt: skip
    with staging(staging_dir) as root, gdal_s3_env(), make_executor(config, bundle) as executor:

        def record(scene: BucketScene, result: SceneResult) -> SceneResult:
            store.record(manifest, _entry(scene, result, bundle.hash, cfg_hash))
            return result

        def work(item: tuple[int, BucketScene]) -> SceneResult:
            i, scene = item
            stage = root / f"{i:05d}"
            if scene.problem:
                reason = redact(f"{scene.uri}: {scene.problem}")
                return record(scene, SceneResult(scene.uri, scene.stem, "failed", reason=reason))
            try:
                lease = acquire(S3LeaseStore(fs, dst, scene.uri), timeout=config.execution.lease_timeout_s,
                                wait=config.execution.wait)  # fmt: skip
            except OSError as exc:  # the store is unreachable: like a transient failure, tried next run
                if debug:
                    raise
                return SceneResult(scene.uri, scene.stem, "failed", reason=failure_reason(exc, scene.uri))
            if isinstance(lease, Busy):  # another run has it; its manifest entry will say how it went
                return SceneResult(scene.uri, scene.stem, "skipped", reason=redact(lease.reason))
            try:
                if not needed(scene, store.latest()):  # another run finished it since we listed
                    return SceneResult(scene.uri, scene.stem, "skipped", reason="done by another run")
                # the scene job mirrors the scene's folder under the stage, as under a local output
                args = (scene, quote(bundle), config, str(stage), dst, quote(executor))
                result = run_scene_task(bucket_scene_task, scene.stem, scene.source, *args, debug=debug)
                if lease.note and result.status == "ok":
                    result.reason = lease.note
                return record(scene, result)  # before the lease goes: the next run sees it done
            finally:
                lease.release()
                shutil.rmtree(stage, ignore_errors=True)  # the staging disk holds the scenes in flight only

        catalogue = CollectionStore(fs, dst)
        for result in run_each(list(enumerate(todo)), work, scenes_in_flight(executor, len(todo))):
            report_result(summary, result)  # the collection is written from this thread only
            if result.status == "ok" and "item" in result.outputs:
                catalogue.record(result.outputs["item"])
    return finish(summary, started)  # type: ignore[return-value]


def run_bucket_job(
    config: JobConfig,
    *,
    progress: ProgressFactory | None = None,
    on_result: Callable[[SceneResult], None] | None = None,
    debug: bool = False,
    staging_dir: str | None = None,
    reprocess_failed: bool = False,
) -> RunSummary:
    """Run the bucket flow once (``tilewise run s3://... s3://...``) and return its summary."""
    return run_flow(bucket_flow, config, progress=progress, on_result=on_result, staging_dir=staging_dir,
                    reprocess_failed=reprocess_failed, debug=debug)  # fmt: skip

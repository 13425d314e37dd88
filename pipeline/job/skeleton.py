"""The job skeleton every way of running tilewise shares.

Check the job, read the bundle once, prepare the output folder, find the scenes, make the executor
(with the model built once in this process, or loaded once per Dask worker), and run the scenes: one
at a time here, several at once on a cluster. ``run_job`` is the plain runner; the Prefect flows run
the same steps with each scene as a task run.
"""

from __future__ import annotations

import contextvars
import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pipeline.atomic import clean_stale_temps
from pipeline.errors import ConfigError, OutputError
from pipeline.execution.local import Executor, LocalExecutor, Progress
from pipeline.formats.source import SceneSource
from pipeline.job.config import JobConfig
from pipeline.job.results import SceneResult
from pipeline.job.scene_job import run_scene

ProgressFactory = Callable[[str, int], Progress]
T = TypeVar("T")


@dataclass
class Job:
    """A job that may start: its config, its bundle (read once), its output folder and its scenes."""

    config: JobConfig
    bundle: Any
    out_dir: Path
    scenes: list[SceneSource]


def prepare_job(config: JobConfig, *, sources: list[SceneSource] | None = None) -> Job:
    """Everything that refuses a whole job (config, bundle, output folder) happens here, up front."""
    from models.bundle.sources import open_model
    from pipeline.execution.lease import live_leases
    from pipeline.job.discover import WORK_DIR, discover

    if not (config.input and config.output and config.model):
        raise ConfigError("input, output and model are all required")
    bundle = open_model(config.model, trust_pickle=config.trust_pickle, options=config.model_options)
    out_dir = prepare_output(config.output)
    if config.execution.workers or config.execution.scheduler:
        bundle = as_saved_bundle(bundle, out_dir)
    scenes = sources if sources is not None else discover(config.input, exclude=str(out_dir))
    if not live_leases(out_dir / WORK_DIR, config.execution.lease_timeout_s):
        # a crashed run's temporaries, at any depth; never while another run holds a scene
        clean_stale_temps(out_dir, keep=(WORK_DIR,))
    return Job(config, bundle, out_dir, list(scenes))


def as_saved_bundle(bundle: Any, out_dir: Path) -> Any:
    """A model of another kind (an nnU-Net folder, ...) saved once as a tilewise bundle under the work
    folder, so that Dask workers load it from its path as safetensors: they never unpickle, and they
        build exactly the folds and settings the job chose. A net that needs the bundle's own code (trusted
    with ``--trust-code``) cannot be saved as data: workers then open the bundle itself, with the
    job's ``model_options`` and ``trust_pickle``."""
    from models.bundle import CONFIG_NAME, load_bundle, save_bundle
    from pipeline.job.discover import WORK_DIR

    if (Path(bundle.path) / CONFIG_NAME).is_file() or getattr(bundle, "needs_its_code", False):
        return bundle  # a trusted bundle's own code: workers reopen it with the job's model_options
    saved = out_dir / WORK_DIR / "models" / bundle.hash[:16]
    if not (saved / CONFIG_NAME).is_file():
        model = bundle.build()
        save_bundle(saved, bundle.config, model.state_dict(), overwrite=True)
    return load_bundle(saved)


def prepare_output(output: str) -> Path:
    if "://" in output:
        raise ConfigError("object-store outputs run through the bucket flow (tilewise serve)", path=output)
    out = Path(output)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder: {exc.strerror or exc}", path=output) from exc
    try:  # a read-only folder fails every scene: refuse the job once, up front (root ignores modes)
        fd, probe = tempfile.mkstemp(prefix=".tw-probe-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"output folder is not writable: {exc.strerror or exc}", path=output) from exc
    return out


def _builder(bundle: Any, device: str) -> Callable[[], Any]:
    def build() -> Any:
        from pipeline.engine.predictor import resolve_device

        return bundle.build(device=resolve_device(device))

    return build


def make_executor(config: JobConfig, bundle: Any) -> AbstractContextManager[Executor]:
    """The local sweep over the bundle's network by default; Dask when workers or a scheduler are set
    (each worker then loads the bundle once, from its path)."""
    ex = config.execution
    if ex.workers or ex.scheduler:
        from pipeline.execution.distributed import dask_executor

        return dask_executor(
            workers=ex.workers or 1,
            scheduler=ex.scheduler,
            threads_per_worker=ex.threads_per_worker,
            device=ex.device,
        )
    return nullcontext(LocalExecutor(build=_builder(bundle, ex.device)))


def scenes_in_flight(executor: Executor, scenes: int) -> int:
    """Scenes run at once: one in-process, about two per worker on a cluster."""
    workers = getattr(executor, "workers", 0)
    return max(1, min(scenes, 2 * workers)) if workers else 1


def run_each(items: list[T], work: Callable[[T], SceneResult], in_flight: int) -> Iterator[SceneResult]:
    """``work`` on every item, ``in_flight`` at a time; results come in completion order. Each thread
    runs inside a copy of the caller's context (a Prefect flow run's, for one)."""
    if in_flight <= 1:
        yield from (work(item) for item in items)
        return
    with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="tilewise-scene") as pool:
        futures = [pool.submit(contextvars.copy_context().run, work, item) for item in items]
        yield from (f.result() for f in as_completed(futures))


def in_scene_order(results: list[SceneResult], scenes: list[SceneSource]) -> list[SceneResult]:
    order = {s.uri: i for i, s in enumerate(scenes)}
    return sorted(results, key=lambda r: order.get(r.uri, 0))


def run_job(
    config: JobConfig,
    *,
    sources: list[SceneSource] | None = None,
    progress: ProgressFactory | None = None,
    on_result: Callable[[SceneResult], None] | None = None,
    debug: bool = False,
) -> list[SceneResult]:
    """Run every scene of the job without Prefect; a failed scene is a result, never raised."""
    job = prepare_job(config, sources=sources)
    with make_executor(config, job.bundle) as executor:

        def one(source: SceneSource) -> SceneResult:
            tick = progress(source.uri, 0) if progress else None
            result = run_scene(source, job.bundle, config, job.out_dir, executor, progress=tick, debug=debug)
            if on_result:
                on_result(result)
            return result

        results = list(run_each(job.scenes, one, scenes_in_flight(executor, len(job.scenes))))
    return in_scene_order(results, job.scenes)

"""A whole job: discover scenes, load the bundle once, run each scene, collect results.

The CLI, the Prefect flows and the tests all call ``run_batch``; only the presentation differs.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from pipeline.atomic import clean_stale_temps
from pipeline.errors import ConfigError, OutputError
from pipeline.execution.local import Executor, LocalExecutor, Progress
from pipeline.job.config import JobConfig
from pipeline.job.scene_job import SceneResult, run_scene

ProgressFactory = Callable[[str, int], Progress]


def make_executor(config: JobConfig) -> AbstractContextManager[Executor]:
    """The local sweep by default; a Dask executor when workers or a scheduler are asked for."""
    if config.execution.workers or config.execution.scheduler:
        from pipeline.execution.distributed import dask_executor

        ex = config.execution
        return dask_executor(
            workers=ex.workers or 1,
            scheduler=ex.scheduler,
            threads_per_worker=ex.threads_per_worker,
            device=ex.device,
        )
    return nullcontext(LocalExecutor())


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


def run_batch(
    config: JobConfig,
    *,
    sources: list[Any] | None = None,
    progress: ProgressFactory | None = None,
    on_result: Callable[[SceneResult], None] | None = None,
    debug: bool = False,
) -> list[SceneResult]:
    """Run every scene of the job; a failed scene is reported, never raised."""
    from models.bundle import load_bundle
    from pipeline.job.discover import discover

    if not (config.input and config.output and config.model):
        raise ConfigError("input, output and model are all required")
    bundle = load_bundle(config.model)
    out_dir = prepare_output(config.output)
    scenes = sources if sources is not None else discover(config.input, exclude=str(out_dir))
    clean_stale_temps(out_dir)  # temporaries of a crashed earlier run; never those of scenes in flight

    def one(source: Any, executor: Executor) -> SceneResult:
        tick = progress(source.uri, 0) if progress else None
        result = run_scene(source, bundle, config, out_dir, executor, progress=tick, debug=debug)
        if on_result:
            on_result(result)
        return result

    with make_executor(config) as executor:
        lanes = concurrent_scenes(executor, len(scenes))
        if lanes <= 1:
            return [one(source, executor) for source in scenes]
        # a cluster runs several scenes at once, so many small scenes keep every worker busy
        with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="tilewise-scene") as pool:
            return list(pool.map(lambda s: one(s, executor), scenes))


def concurrent_scenes(executor: Executor, scenes: int) -> int:
    """Scenes in flight at once: one in-process, about two per worker on a cluster."""
    workers = getattr(executor, "workers", 0)
    return max(1, min(scenes, 2 * workers)) if workers else 1

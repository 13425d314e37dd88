"""The one-off job as a Prefect flow: the job skeleton of ``pipeline.job.skeleton``, each scene a
task run (retries of transient errors, logs and artifacts in Prefect)."""

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.utilities.annotations import quote

from flows.artifacts import RunSummary
from flows.scene_runs import (
    SCENE_TASK_OPTIONS,
    finish,
    refuse,
    report_result,
    run_flow,
    run_scene_once,
    run_scene_task,
)
from pipeline.errors import TilewiseError
from pipeline.execution.local import Executor, Progress
from pipeline.formats.source import SceneSource
from pipeline.job.config import JobConfig
from pipeline.job.discover import scene_stem
from pipeline.job.results import SceneResult
from pipeline.job.skeleton import (
    ProgressFactory,
    in_scene_order,
    make_executor,
    prepare_job,
    run_each,
    scenes_in_flight,
)


@task(name="scene", **SCENE_TASK_OPTIONS)
def scene_task(
    source: SceneSource,
    bundle: Any,
    config: JobConfig,
    out_dir: str,
    executor: Executor,
    progress: Progress | None = None,
    debug: bool = False,
) -> SceneResult:
    """One scene of the folder job (bundle and executor arrive quoted: never hashed nor walked)."""
    return run_scene_once(source, bundle, config, Path(out_dir), executor, progress, debug)


@flow(name="tilewise-folder", description="Segment every scene under a local folder, file or glob.")
def folder_flow(config: JobConfig, debug: bool = False) -> RunSummary:
    """One-off job over a folder; the bundle is read once, each scene is one task."""
    started = time.perf_counter()
    try:
        job = prepare_job(config)
    except TilewiseError as exc:
        return refuse(exc, debug)  # type: ignore[return-value]
    summary = RunSummary("folder", str(job.out_dir), listed=len(job.scenes), model=job.bundle.config.name,
                         bundle_hash=job.bundle.hash)  # fmt: skip
    with make_executor(config, job.bundle) as executor:

        def work(source: SceneSource) -> SceneResult:
            return run_scene_task(scene_task, scene_stem(source), source, source, quote(job.bundle), config,
                                  str(job.out_dir), quote(executor), debug=debug)  # fmt: skip

        for result in run_each(job.scenes, work, scenes_in_flight(executor, len(job.scenes))):
            report_result(summary, result)
    summary.results = in_scene_order(summary.results, job.scenes)
    return finish(summary, started)  # type: ignore[return-value]


def run_folder_job(
    config: JobConfig,
    *,
    progress: ProgressFactory | None = None,
    on_result: Callable[[SceneResult], None] | None = None,
    debug: bool = False,
) -> RunSummary:
    """Run the folder flow (temporary local Prefect server unless ``PREFECT_API_URL`` is set) and
    return its summary; a failed scene is in the summary, a job that cannot start raises."""
    return run_flow(folder_flow, config, progress=progress, on_result=on_result, debug=debug)

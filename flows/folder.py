"""The one-off job as a Prefect flow: job config -> discover scenes -> one task per scene -> summary.

A Prefect task is a whole scene. Blocks fan out inside it through our executor (local sweep or Dask),
never as Prefect tasks: thousands of task runs would swamp the API, and under a Dask task runner every
worker would start its own temporary Prefect server. Only transient I/O errors are retried (the work
store makes a retry resume where it stopped); a corrupt file or a wrong band count fails at once.
"""

import contextvars
import re
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State
from prefect.utilities.annotations import quote

from flows.artifacts import RunSummary, ScenesFailed, publish
from pipeline.atomic import clean_stale_temps
from pipeline.errors import ConfigError, FormatError, TilewiseError, redact
from pipeline.execution.local import Executor, Progress
from pipeline.formats.source import SceneSource
from pipeline.job.config import JobConfig
from pipeline.job.discover import scene_stem
from pipeline.job.scene_job import SceneResult, run_scene
from pipeline.job.skeleton import ProgressFactory, concurrent_scenes, make_executor, prepare_output

T = TypeVar("T")


@dataclass
class Hooks:
    """Presentation callbacks of the caller (the CLI's progress bars); never flow parameters."""

    progress: ProgressFactory | None = None
    on_result: Callable[[SceneResult], None] | None = None


HOOKS: ContextVar[Hooks | None] = ContextVar("tilewise_flow_hooks", default=None)


class TransientSceneError(Exception):
    """A scene hit an I/O error that may pass (network, throttling, timeouts): Prefect retries it."""


# OSErrors that will not go away by trying again.
_PERMANENT_OS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


# GDAL reports a network failure on /vsis3/ or /vsicurl/ as a read error; the file is not corrupt.
_GDAL_NETWORK = re.compile(r"CURL error|HTTP response code: (?:429|5\d\d)|timed? ?out", re.IGNORECASE)


def is_transient(exc: BaseException) -> bool:
    """Worth a retry: timeouts, connection and other OS-level I/O errors, and GDAL's network errors;
    never another deliberate tilewise error (``FormatError``, ``InputError``, ``OutputError``...) nor
    a missing file."""
    if isinstance(exc, FormatError) and _GDAL_NETWORK.search(str(exc)):
        return True
    if isinstance(exc, (TilewiseError, *_PERMANENT_OS)):
        return False
    if isinstance(exc, OSError):  # TimeoutError and ConnectionError included
        return True
    return type(exc).__module__.startswith(("botocore", "aiobotocore", "urllib3", "aiohttp"))


def retry_transient(task: Any, task_run: Any, state: State) -> bool:
    """Prefect ``retry_condition_fn``: retry only a ``TransientSceneError``."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:
        return False
    return isinstance(exc, TransientSceneError)


def fail_reason(exc: BaseException) -> str:
    if isinstance(exc, TilewiseError):
        return redact(str(exc))
    if isinstance(exc, MemoryError):
        return "out of memory; lower tiling.memory_budget_mb or --batch-size"
    return redact(f"internal error {type(exc).__name__}: {exc}")


def run_scene_once(
    source: SceneSource,
    bundle: Any,
    config: JobConfig,
    out_dir: Path,
    executor: Executor,
    progress: Progress | None = None,
    debug: bool = False,
) -> SceneResult:
    """``run_scene``, except that a transient error raises ``TransientSceneError`` (for Prefect's
    retries) instead of becoming a failed result. Other failures are results with a one-line reason."""
    t0 = time.perf_counter()
    try:
        return run_scene(source, bundle, config, out_dir, executor, progress=progress, debug=True)
    except Exception as exc:
        if is_transient(exc) and not debug:
            raise TransientSceneError(redact(f"{source.uri}: {type(exc).__name__}: {exc}")) from None
        if debug:
            raise
        result = SceneResult(source.uri, scene_stem(source), "failed", reason=fail_reason(exc))
        if not isinstance(exc, TilewiseError):
            result.report["traceback"] = redact(traceback.format_exc(limit=8))
        result.seconds = round(time.perf_counter() - t0, 3)
        return result


SCENE_TASK_OPTIONS: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": [1, 5],
    "retry_condition_fn": retry_transient,
    "cache_policy": NO_CACHE,
    "persist_result": False,
}


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


def settle(state: State, source: SceneSource, started: float) -> SceneResult:
    """The task's final state as a scene result (retries exhausted -> failed with the reason)."""
    value = state.result(raise_on_failure=False)
    if isinstance(value, SceneResult):
        return value
    reason = fail_reason(value) if isinstance(value, BaseException) else redact(state.message or "failed")
    result = SceneResult(source.uri, scene_stem(source), "failed", reason=reason)
    if isinstance(value, TransientSceneError):
        result.reason, result.report["transient"] = f"{value} (after retries)", True
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def scene_progress(source: SceneSource) -> Progress | None:
    hooks = HOOKS.get()
    return hooks.progress(source.uri, 0) if hooks and hooks.progress else None


def report_result(summary: RunSummary, result: SceneResult) -> None:
    summary.results.append(result)
    hooks = HOOKS.get()
    if hooks and hooks.on_result:
        hooks.on_result(result)
    detail = result.reason or f"{result.seconds:.1f} s, {result.windows} windows"
    get_run_logger().info("%s: %s (%s)", result.stem, result.status, redact(detail))


def finish(summary: RunSummary, started: float) -> RunSummary | State:
    """Publish the artifacts; end Failed (with the summary as data) when any scene failed."""
    from prefect.runtime import flow_run

    summary.seconds = round(time.perf_counter() - started, 3)
    summary.flow_run_id = flow_run.id
    publish(summary)
    if summary.failed:
        return Failed(message=redact(summary.failure_message()), data=ScenesFailed(summary))
    return summary


def refuse(exc: TilewiseError, debug: bool) -> State:
    """A job that cannot start (bad config, bundle, output): Failed, without a traceback in the log."""
    if debug:
        raise exc
    return Failed(message=redact(str(exc)), data=exc)


def in_lanes(items: list[T], work: Callable[[T], SceneResult], lanes: int) -> Iterator[SceneResult]:
    """``work`` on every item: here one by one, or ``lanes`` at a time when the executor is a cluster
    with room for several scenes (as ``run_batch`` does). Results come in completion order."""
    if lanes <= 1:
        yield from (work(item) for item in items)
        return
    with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="tilewise-scene") as pool:
        # each thread runs its task inside a copy of this flow run's context
        futures = [pool.submit(contextvars.copy_context().run, work, item) for item in items]
        yield from (f.result() for f in as_completed(futures))


@flow(name="tilewise-folder", description="Segment every scene under a local folder, file or glob.")
def folder_flow(config: JobConfig, debug: bool = False) -> RunSummary:
    """One-off job over a folder; the bundle is loaded once, each scene is one task."""
    from models.bundle import load_bundle
    from pipeline.job.discover import discover

    started = time.perf_counter()
    try:
        if not (config.input and config.output and config.model):
            raise ConfigError("input, output and model are all required")
        bundle = load_bundle(config.model)
        out_dir = prepare_output(config.output)
        scenes = discover(config.input, exclude=str(out_dir))
    except TilewiseError as exc:
        return refuse(exc, debug)  # type: ignore[return-value]
    clean_stale_temps(out_dir)  # temporaries of a crashed earlier run, before any scene is in flight
    summary = RunSummary("folder", str(out_dir), listed=len(scenes), model=bundle.config.name,
                         bundle_hash=bundle.hash)  # fmt: skip
    with make_executor(config) as executor:

        def work(source: SceneSource) -> SceneResult:
            t0 = time.perf_counter()
            run = scene_task.with_options(task_run_name=f"scene-{scene_stem(source)}")
            state = run(source, quote(bundle), config, str(out_dir), quote(executor),
                        quote(scene_progress(source)), debug, return_state=True)  # fmt: skip
            if debug and state.is_failed():
                state.result()  # re-raise the original exception
            return settle(state, source, t0)

        for result in in_lanes(scenes, work, concurrent_scenes(executor, len(scenes))):
            report_result(summary, result)
    order = {s.uri: i for i, s in enumerate(scenes)}
    summary.results.sort(key=lambda r: order.get(r.uri, 0))
    return finish(summary, started)  # type: ignore[return-value]


def outcome(state: State) -> RunSummary:
    """The summary of a finished run, whatever its state; errors that stopped the job are raised."""
    value = state.result(raise_on_failure=False)
    if isinstance(value, ScenesFailed):
        return value.summary
    if isinstance(value, BaseException):
        raise value
    if not isinstance(value, RunSummary):
        raise RuntimeError(f"flow run ended in {state.name}: {state.message}")
    return value


def run_folder_job(
    config: JobConfig,
    *,
    progress: ProgressFactory | None = None,
    on_result: Callable[[SceneResult], None] | None = None,
    debug: bool = False,
) -> RunSummary:
    """Run the folder flow (temporary local Prefect server unless ``PREFECT_API_URL`` is set) and
    return its summary; a failed scene is in the summary, a job that cannot start raises."""
    from flows.serve import prefect_api

    token = HOOKS.set(Hooks(progress, on_result))
    try:
        with prefect_api():
            state = folder_flow(config, debug=debug, return_state=True)
    finally:
        HOOKS.reset(token)
    return outcome(state)

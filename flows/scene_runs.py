"""One scene as a Prefect task run, shared by the folder and bucket flows.

A Prefect task is a whole scene. Blocks fan out inside it through our executor (local sweep or Dask),
never as Prefect tasks: thousands of task runs would swamp the API, and under a Dask task runner every
worker would start its own temporary Prefect server. Only transient I/O errors are retried (the work
store makes a retry resume where it stopped); a corrupt file or a wrong band count fails at once.
"""

import re
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State
from prefect.utilities.annotations import quote

from flows.artifacts import RunSummary, ScenesFailed, publish
from flows.prefect_api import prefect_api
from pipeline.errors import FormatError, TilewiseError, redact
from pipeline.execution.local import Executor, Progress
from pipeline.formats.source import SceneSource
from pipeline.job.config import JobConfig
from pipeline.job.discover import scene_stem
from pipeline.job.results import SceneResult, failed_result, failure_reason
from pipeline.job.scene_job import run_scene
from pipeline.job.skeleton import ProgressFactory


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
    execution = config.execution.model_copy(update={"orchestrator": "prefect"})  # the report says so
    config = config.model_copy(update={"execution": execution})
    try:
        return run_scene(source, bundle, config, out_dir, executor, progress=progress, debug=True)
    except Exception as exc:
        if is_transient(exc) and not debug:
            raise TransientSceneError(redact(f"{source.uri}: {type(exc).__name__}: {exc}")) from None
        if debug:
            raise
        return failed_result(source.uri, scene_stem(source), exc, time.perf_counter() - t0)


SCENE_TASK_OPTIONS: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": [1, 5],
    "retry_condition_fn": retry_transient,
    "cache_policy": NO_CACHE,
    "persist_result": False,
}


def settle(state: State, source: SceneSource, started: float) -> SceneResult:
    """The task's final state as a scene result (retries exhausted -> failed with the reason)."""
    value = state.result(raise_on_failure=False)
    if isinstance(value, SceneResult):
        return value
    seconds = time.perf_counter() - started
    if isinstance(value, TransientSceneError):
        result = SceneResult(source.uri, scene_stem(source), "failed", seconds=round(seconds, 3))
        result.reason, result.report["transient"] = f"{value} (after retries)", True
        return result
    if isinstance(value, BaseException):
        return failed_result(source.uri, scene_stem(source), value, seconds)
    reason = redact(state.message or "failed")
    return SceneResult(source.uri, scene_stem(source), "failed", reason=reason, seconds=round(seconds, 3))


def run_scene_task(scene_task: Any, stem: str, source: SceneSource, *args: Any, debug: bool) -> SceneResult:
    """Run a flow's scene task as its own task run and settle its state into a result; ``args`` are
    the task's parameters (heavy ones quoted by the caller)."""
    t0 = time.perf_counter()
    run = scene_task.with_options(task_run_name=f"scene-{stem}")
    state = run(*args, quote(scene_progress(source)), debug, return_state=True)
    if debug and state.is_failed():
        state.result()  # re-raise the original exception
    return settle(state, source, t0)


def run_flow(
    job_flow: Any,
    config: JobConfig,
    *,
    progress: ProgressFactory | None,
    on_result: Callable[[SceneResult], None] | None,
    **params: Any,
) -> RunSummary:
    """Run a job flow against ``prefect_api()`` with the caller's hooks and return its summary; a
    failed scene is in the summary, a job that cannot start raises."""
    token = HOOKS.set(Hooks(progress, on_result))
    try:
        with prefect_api():
            state = job_flow(config, return_state=True, **params)
    finally:
        HOOKS.reset(token)
    return outcome(state)


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
    return Failed(message=failure_reason(exc), data=exc)


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

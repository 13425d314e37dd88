"""A whole job: discover scenes, load the bundle once, run each scene, collect results.

The CLI, the Prefect flows and the tests all call ``run_batch``; only the presentation differs.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from pipeline.config import JobConfig
from pipeline.errors import ConfigError, OutputError
from pipeline.execute import Executor, LocalExecutor, Progress
from pipeline.job import SceneResult, run_scene

ProgressFactory = Callable[[str, int], Progress]


def make_executor(config: JobConfig) -> AbstractContextManager[Executor]:
    """The local sweep by default; a Dask executor when workers or a scheduler are asked for."""
    if config.execution.workers or config.execution.scheduler:
        from pipeline.distributed import dask_executor

        return dask_executor(config)
    return nullcontext(LocalExecutor())


def prepare_output(output: str) -> Path:
    if "://" in output:
        raise ConfigError("object-store outputs run through the bucket flow (tilewise serve)", path=output)
    out = Path(output)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder: {exc.strerror or exc}", path=output) from exc
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
    from pipeline.discover import discover

    if not (config.input and config.output and config.model):
        raise ConfigError("input, output and model are all required")
    bundle = load_bundle(config.model)
    out_dir = prepare_output(config.output)
    scenes = sources if sources is not None else discover(config.input, exclude=str(out_dir))
    results: list[SceneResult] = []
    with make_executor(config) as executor:
        for source in scenes:
            tick = progress(source.uri, 0) if progress else None
            result = run_scene(source, bundle, config, out_dir, executor, progress=tick, debug=debug)
            results.append(result)
            if on_result:
                on_result(result)
    return results

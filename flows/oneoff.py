"""Which runner a ``tilewise run`` uses: a tracked Prefect flow run, or the same job skeleton without one.

A plain local one-off run (no ``PREFECT_API_URL``, a local output, no ``--prefect``) has nobody to
report to: Prefect would start a temporary server (seconds on a small machine), set up a flow run
and tear both down, only for the records to vanish with the server. It therefore runs the job
skeleton directly (``pipeline.job.skeleton.run_job``): the same steps, executors and outputs as the
folder flow, without Prefect's task retries of transient I/O errors (a rerun resumes instead).
Prefect is not even imported. A run is tracked, as a flow run of ``tilewise-folder`` or
``tilewise-bucket``, when ``PREFECT_API_URL`` names a server, the output is an object-store prefix
(the bucket flow), or ``--prefect`` / ``execution.orchestrator: prefect`` asks for it; served and
scheduled runs always are. Each scene's report records which (``orchestration``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from flows.artifacts import RunSummary
from pipeline.job.config import JobConfig

JobRunner = Callable[..., RunSummary]


def tracked(config: JobConfig) -> bool:
    """Whether this run should be a Prefect flow run (see the module docstring)."""
    if (config.output or "").startswith("s3://"):  # manifests and uploads live in the bucket flow
        return True
    choice = config.execution.orchestrator
    if choice != "auto":
        return choice == "prefect"
    return bool(os.environ.get("PREFECT_API_URL"))


def run_plain_job(config: JobConfig, *, progress: Any = None, debug: bool = False) -> RunSummary:
    """The folder job without Prefect; the same summary the folder flow returns (no flow run id)."""
    from pipeline.job.skeleton import run_job

    started = time.perf_counter()
    config = with_orchestrator(config, "none")
    results = run_job(config, progress=progress, debug=debug)
    summary = RunSummary("folder", str(config.output), results=results, listed=len(results))
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary


def with_orchestrator(config: JobConfig, orchestrator: str) -> JobConfig:
    """``config`` saying who ran it (not part of the config hash: resuming across runners works)."""
    execution = config.execution.model_copy(update={"orchestrator": orchestrator})
    return config.model_copy(update={"execution": execution})


def choose_runner(config: JobConfig) -> JobRunner:
    """The function that runs this job: the bucket or folder flow when tracked, else the plain job."""
    if not tracked(config):
        return run_plain_job
    from flows.prefect_api import prefect_settings_checked

    with prefect_settings_checked():
        if (config.output or "").startswith("s3://"):
            from flows.bucket import run_bucket_job

            return run_bucket_job
        from flows.folder import run_folder_job

        return run_folder_job

"""Prefect orchestration for tilewise: a one-off folder job, scheduled bucket scans, serving.

Prefect tasks are coarse (one per scene); the fine-grained fan-out over blocks stays inside the task,
in our own local or Dask executor (see ``pipeline.job.skeleton.make_executor``). Importing this package is
cheap: Prefect itself loads only when a flow module is imported. Telemetry is off unless the user
has said otherwise, and the first flow runs against a temporary local server unless
``PREFECT_API_URL`` names a real one.

Setting those defaults is the one thing a tilewise module does to the process at import: Prefect
reads its telemetry variables while it is itself imported, so later would be too late.
"""

from __future__ import annotations

import os
from typing import Any

# Before Prefect is imported anywhere in this process: no analytics, no tracking (setdefault, so an
# explicit choice by the user wins).
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# the temporary server can take over 20 s to start on a busy 2-core machine (the default timeout)
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

__all__ = [
    "RunSummary",
    "ScenesFailed",
    "bucket_flow",
    "folder_flow",
    "run_bucket_job",
    "run_folder_job",
    "serve_bucket",
]

_HOME = {
    "RunSummary": "flows.artifacts",
    "ScenesFailed": "flows.artifacts",
    "folder_flow": "flows.folder",
    "run_folder_job": "flows.folder",
    "bucket_flow": "flows.bucket",
    "run_bucket_job": "flows.bucket",
    "serve_bucket": "flows.serve",
}


def __getattr__(name: str) -> Any:
    """Lazy re-exports, so ``tilewise info`` and friends never pay for importing Prefect."""
    if name in _HOME:
        import importlib

        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(name)

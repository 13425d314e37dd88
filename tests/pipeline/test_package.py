"""``import pipeline`` stays light, and importing any tilewise module leaves the process as it was."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "monai", "rasterio", "osgeo", "prefect", "zarr", "nibabel", "dask", "numpy")


def _python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout


def test_import_pipeline_and_its_errors_loads_no_heavy_library():
    code = (
        "import sys, json, pipeline, pipeline.errors, pipeline.atomic\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    assert json.loads(_python(code)) == []


def test_infer_array_is_still_reachable_from_the_package():
    code = "import pipeline; from pipeline import infer_array; print(infer_array.__module__)"
    assert _python(code).strip() == "pipeline.engine.arrays"


def test_importing_every_module_changes_neither_environment_nor_threads_nor_malloc():
    code = """
import importlib, json, os, pkgutil, sys
import torch
import monai  # sets CUBLAS_WORKSPACE_CONFIG when imported: its doing, not ours
before_env, before_threads = dict(os.environ), torch.get_num_threads()
names = []
for package in ("pipeline", "models", "flows"):
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
            names.append(info.name)
from pipeline.engine import allocator, lanes
changed = sorted(k for k in set(before_env) | set(os.environ) if before_env.get(k) != os.environ.get(k))
tuned = allocator._tuned is not None or allocator._libc is not None
threads = torch.get_num_threads() == before_threads
print(json.dumps({"modules": len(names), "env": changed, "threads": threads, "malloc_tuned": tuned,
                  "fork_hook": lanes._fork_hook}))
"""
    result = json.loads(_python(code))
    assert result["modules"] > 60
    # the one documented exception: flows sets Prefect's telemetry defaults before Prefect is imported
    assert set(result["env"]) <= {
        "DO_NOT_TRACK",
        "PREFECT_SERVER_ANALYTICS_ENABLED",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
    }
    assert result["threads"] and not result["malloc_tuned"] and not result["fork_hook"]

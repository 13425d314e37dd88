"""What a run's process holds before its first block, for ``tilewise plan``, without loading it here.

A run holds the modules it loads (torch, the job, GDAL's writers; Prefect too when it is a tracked
flow run), the model, and for a tracked run Prefect's run engine. The modules' footprint depends on
the install only: it is measured once per install and mode (plain or tracked) in a child process (so
the plan itself imports no torch or Prefect) and cached under ``$TILEWISE_CACHE_DIR`` (default
``$XDG_CACHE_HOME/tilewise``, else ``~/.cache/tilewise``), keyed by the interpreter and the versions of
tilewise, torch and Prefect. The model adds its weights as stored (float32 in memory as on disk) plus
what torch allocates building it. ``TILEWISE_BASELINE_MB`` sets the modules' figure outright (a fleet
whose workers were measured).

A plain one-off run (flows.oneoff) loads no Prefect (nor boto3): its modules measured 265 MB here (257 MB
without boto3) against a tracked run's 309 MB plus the run engine's 110 MB, so the plan asks which run
it is planning (``--prefect``, or PREFECT_API_URL set, as ``tilewise run`` decides).
benchmarks/bench_plan_memory.py checks the plan against the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

_MODULES = {
    "plain": "flows.oneoff, pipeline.job.skeleton, pipeline.job.scene_job, pipeline.job.outputs, torch",
    "tracked": "flows.folder, pipeline.job.skeleton, pipeline.job.scene_job, pipeline.job.outputs, torch",
}
# a plain run loads its modules as ``tilewise run`` does: without boto3 (flows.cli.process.lean_start)
_START = {"plain": "import flows.cli.process as p\np.own_process()\np.lean_start()\n", "tracked": ""}
PROBE = "{}import {}\nfrom pipeline.job.memory import rss_mb\nprint(rss_mb())\n"
WEIGHTS = {".safetensors", ".pt", ".pth", ".ts", ".onnx", ".bin", ".ckpt", ".pkl"}
BUILD_MB = 10.0  # torch's own allocations on a first model build (measured: s2-water, 1.9 MB weights)


def cache_file() -> Path:
    root = os.environ.get("TILEWISE_CACHE_DIR")
    if root:
        return Path(root) / "baseline.json"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tilewise" / "baseline.json"


def _install_key() -> str:
    from pipeline import __version__

    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "-"

    return f"{sys.executable}|tilewise {__version__}|torch {ver('torch')}|prefect {ver('prefect')}"


def modules_mb(tracked: bool = False) -> float:
    """The run's modules' footprint: ``TILEWISE_BASELINE_MB``, the cached figure, or measured now."""
    if os.environ.get("TILEWISE_BASELINE_MB"):
        return float(os.environ["TILEWISE_BASELINE_MB"])
    mode = "tracked" if tracked else "plain"
    path, key = cache_file(), f"{_install_key()}|{mode}"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}
    if isinstance(cached.get(key), (int, float)):
        return float(cached[key])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    probe = [sys.executable, "-c", PROBE.format(_START[mode], _MODULES[mode])]
    done = subprocess.run(probe, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"cannot measure a run's baseline memory: {done.stderr.strip()[-500:]}")
    figure = float(done.stdout.split()[-1])
    cached[key] = round(figure, 1)
    try:  # a read-only home only costs the next plan the same measurement
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cached, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass
    return figure


def model_mb(bundle: Any) -> float:
    """The model's share: its weight files (a bundle folder's, or the model file itself)."""
    path = Path(bundle.path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.suffix in WEIGHTS and p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20 + BUILD_MB


def run_baseline_mb(bundle: Any, *, tracked: bool = False) -> float:
    """What a worker process holds before its first block: modules and model, and Prefect's run
    engine when the run is a tracked flow run."""
    from pipeline.job.memory import FLOW_ENGINE_MB

    return modules_mb(tracked) + model_mb(bundle) + (FLOW_ENGINE_MB if tracked else 0.0)

"""Run one job and SIGKILL this very process at a chosen point, the way a node dies (no cleanup).

``python -m tests.hardening.killer POINT N CONFIG_JSON`` (from the repository root) dies at the N-th
hit of POINT; ``arm(POINT, N)`` does the same inside any process (``benchmarks/soak_faults.py`` arms the
real CLI through a ``sitecustomize``). Points:

- ``compute``: before the N-th block result is written (blocks computing);
- ``merge``: after the N-th seam merge wrote its chunk, before its marker (merge in progress);
- ``outputs``: half-way through writing the N-th COG (a partial temporary file beside the final path);
- ``report``: every final file renamed into place, the report not yet written.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

POINTS = ("compute", "merge", "outputs", "report")


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _on_nth(fn: Callable[..., Any], n: int) -> Callable[..., Any]:
    """``fn``, except that its N-th call kills the process instead of running."""
    calls = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == n:
            _die()
        return fn(*args, **kwargs)

    return wrapper


def arm(point: str, n: int) -> None:
    """Patch this process so that it SIGKILLs itself at the N-th hit of ``point``."""
    import pipeline.formats.cog as cog
    import pipeline.job.scene_job as job
    from pipeline.execution.workstore import WorkStore

    if point == "compute":
        WorkStore.put_block = _on_nth(WorkStore.put_block, n)  # type: ignore[method-assign]
    elif point == "merge":  # merge_block() writes the block's whole chunk, then marks it merged
        WorkStore.mark_merged = _on_nth(WorkStore.mark_merged, n)  # type: ignore[method-assign]
    elif point == "outputs":
        real_copy = cog.rasterio.shutil.copy
        copies = 0

        def copy(src: Any, dst: Any, **kw: Any) -> None:
            nonlocal copies
            copies += 1
            real_copy(src, dst, **kw)
            if copies == n:
                path = Path(str(dst))
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
                _die()

        cog.rasterio.shutil.copy = copy
    elif point == "report":
        job.write_report = _on_nth(job.write_report, n)
    else:
        raise ValueError(f"unknown kill point {point!r}; one of {POINTS}")


def main() -> None:
    from pipeline.job.config import load_config
    from pipeline.job.skeleton import run_job

    point, n, overrides = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    arm(point, n)
    for result in run_job(load_config(None, overrides)):
        print(result.stem, result.status, result.reason)


if __name__ == "__main__":
    main()

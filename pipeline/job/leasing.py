"""The lease a scene's run holds on its work folder, so two runs on one output never work on one scene.

The lease file sits beside the work folder (``.tilewise-work/<stem>-<hash>.lease``), not inside it:
a run that starts a scene afresh wipes the work folder, and must not wipe the lease with it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from pipeline.execution.lease import Busy, FileLeaseStore, acquire
from pipeline.job.config import ExecutionConfig
from pipeline.job.results import SceneResult

LEASE_SUFFIX = ".lease"
log = logging.getLogger("tilewise")


def lease_path(work_dir: Path) -> Path:
    return work_dir.with_name(work_dir.name + LEASE_SUFFIX)


@contextlib.contextmanager
def scene_lease(work_dir: Path, execution: ExecutionConfig, result: SceneResult) -> Iterator[bool]:
    """Yield True while this run holds the scene's lease; False (the result says who holds it, and
    the scene counts as skipped) when another live run does and ``execution.wait`` is off."""

    def waiting(busy: Busy) -> None:
        log.warning("%s: waiting, %s", result.uri, busy.reason)

    got = acquire(FileLeaseStore(lease_path(work_dir)), timeout=execution.lease_timeout_s,
                  wait=execution.wait, on_wait=waiting)  # fmt: skip
    if isinstance(got, Busy):
        result.status, result.reason = "skipped", got.reason
        yield False
        return
    try:
        if got.taken_over is not None:
            result.report["lease"] = {"taken_over_from": asdict(got.taken_over), "note": got.note}
        yield True
        if result.status == "ok" and got.note:
            result.reason = got.note
        if got.lost:
            log.warning("%s: this run lost its lease while working (paused longer than the lease "
                        "timeout?)", result.uri)  # fmt: skip
    finally:
        got.release()
        with contextlib.suppress(OSError):  # the work area goes once its last scene is done
            work_dir.parent.rmdir()

"""Executors run a scene's blocks: in this process (a resumable sweep) or on a Dask cluster.

Both call the same ``phase1``/``phase2`` functions on the same work store, so their outputs are
byte-identical; they differ only in where the blocks run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pipeline.core.tiling import BlockPlan
from pipeline.engine.predictor import Predictor
from pipeline.execution.tasks import SceneTask, TaskStats, phase1, phase2, ready_to_merge, release
from pipeline.execution.workstore import Index, WorkStore

Progress = Callable[[int, int], None]  # (blocks merged so far, total blocks)


class Executor(Protocol):
    def run(self, task: SceneTask, progress: Progress | None = None) -> TaskStats: ...


def needs_phase1(plan: BlockPlan, store: WorkStore, index: Index) -> bool:
    """A block is computed unless its result is on disk or nobody needs it any more."""
    if store.has_block(index):
        return False
    return not all(store.is_merged(c) for c in plan.consumers(index))


class LocalExecutor:
    """One process: sweep the blocks in order and merge each seam as soon as it can be merged.

    Peak memory is a few blocks plus the in-flight batch, whatever the scene size.
    """

    def __init__(self, predictor: Predictor | None = None) -> None:
        self.predictor = predictor

    def run(self, task: SceneTask, progress: Progress | None = None) -> TaskStats:
        plan = task.plan
        store = WorkStore(task.work_dir)
        order = [b.index for b in plan.blocks()]
        total = len(order)
        merged = sum(store.is_merged(i) for i in order)

        def merge(index: Index) -> None:
            nonlocal merged
            phase2(task, index, store)
            merged += 1
            for c in plan.contributors(index):
                release(plan, store, c)
            if progress is not None:
                progress(merged, total)

        def after_phase1(index: Index) -> None:
            for c in plan.consumers(index):
                if not store.is_merged(c) and ready_to_merge(plan, store, c):
                    merge(c)

        if progress is not None:
            progress(merged, total)
        for index in order:  # resumed run: merge what earlier runs computed
            if not store.is_merged(index) and ready_to_merge(plan, store, index):
                merge(index)
        todo = [i for i in order if needs_phase1(plan, store, i)]
        stats = phase1(task, todo, predictor=self.predictor, on_block=after_phase1)
        stats.merged = merged
        missing = [i for i in order if not store.is_merged(i)]
        if missing:
            raise RuntimeError(f"blocks left unmerged: {missing[:5]}")
        return stats

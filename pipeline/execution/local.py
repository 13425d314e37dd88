"""Executors run a scene's blocks: in this process (a resumable sweep) or on a Dask cluster.

Both call the same ``compute_blocks``/``merge_block`` functions on the same work store, so their outputs
are byte-identical; they differ only in where the blocks run and who holds the model and the scene.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from pipeline.core.tiling import BlockPlan
from pipeline.execution.components import thread_map
from pipeline.execution.stages import Stages
from pipeline.execution.tasks import (
    SceneTask,
    TaskStats,
    compute_blocks,
    make_predictor,
    merge_block,
    ready_to_merge,
    release,
)
from pipeline.execution.workstore import Index, WorkStore

Progress = Callable[[int, int], None]  # (blocks merged so far, total blocks)


class Executor(Protocol):
    def run(self, task: SceneTask, progress: Progress | None = None, *, scene: Any = None) -> TaskStats:
        """Run every block of ``task``. ``scene`` is the caller's open scene: an executor in the same
        process reads from it instead of opening the scene again."""
        ...

    def map(self, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        """``fn(*args)`` for each of ``calls``, in order, where the blocks run (post-processing)."""
        ...


def needs_computing(plan: BlockPlan, store: WorkStore, index: Index) -> bool:
    """A block is computed unless its result is on disk or nobody needs it any more."""
    if store.has_block(index):
        return False
    return not all(store.is_merged(c) for c in plan.consumers(index))


class LocalExecutor:
    """One process: sweep the blocks in order and merge each seam as soon as it can be merged.

    The model comes from the caller, never from disk: ``model`` (a network, or any callable
    ``(B, C, *patch) -> (B, K, *patch)``), or ``build``, called once, on the first scene that has
    blocks to compute (a job whose scenes are all done builds nothing). Scenes run one at a time, so
    the build needs no lock. Peak memory is a few blocks plus the in-flight batch, whatever the scene
    size.
    """

    def __init__(self, model: Any = None, *, build: Callable[[], Any] | None = None) -> None:
        if model is None and build is None:
            raise TypeError("LocalExecutor needs a model or a function that builds one")
        self.model, self.build = model, build

    def run(self, task: SceneTask, progress: Progress | None = None, *, scene: Any = None) -> TaskStats:
        own = scene is None
        scene = task.source.open() if own else scene
        try:
            return self._sweep(task, scene, progress)
        finally:
            if own:
                scene.close()

    def map(self, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Per-block post-processing in this process, one block at a time (memory: ``thread_map``)."""
        return thread_map()(fn, calls)

    def _predictor(self, task: SceneTask) -> Callable[[Any], Any]:
        if self.model is None and self.build is not None:
            self.model = self.build()
        return make_predictor(task, self.model)

    def _sweep(self, task: SceneTask, scene: Any, progress: Progress | None) -> TaskStats:
        plan = task.plan
        store = WorkStore(task.work_dir)
        order = [b.index for b in plan.blocks()]
        total = len(order)
        merged = sum(store.is_merged(i) for i in order)
        merging = Stages()

        def merge(index: Index) -> None:
            nonlocal merged
            with merging.timed("merge_seams"):
                merge_block(task, index, store)
            merged += 1
            for c in plan.contributors(index):
                release(plan, store, c)
            if progress is not None:
                progress(merged, total)

        def after_compute(index: Index) -> None:
            for c in plan.consumers(index):
                if not store.is_merged(c) and ready_to_merge(plan, store, c):
                    merge(c)

        if progress is not None:
            progress(merged, total)
        for index in order:  # resumed run: merge what earlier runs computed
            if not store.is_merged(index) and ready_to_merge(plan, store, index):
                merge(index)
        todo = [i for i in order if needs_computing(plan, store, i)]
        stats = TaskStats()
        if todo:
            stats = compute_blocks(
                task, todo, scene=scene, predict=self._predictor(task), on_block=after_compute
            )
        stats.merged = merged
        stats.stages = {**stats.stages, **merging.as_dict()}
        missing = [i for i in order if not store.is_merged(i)]
        if missing:
            raise RuntimeError(f"blocks left unmerged: {missing[:5]}")
        return stats

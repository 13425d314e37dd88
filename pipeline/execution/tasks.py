"""The two kinds of block task of a scene job, as plain functions any executor can call.

A ``SceneTask`` is small and picklable: paths and numbers, never pixels or tensors. A worker opens the
scene and builds the model itself (cached per process), reads its own regions, and writes its own
files and chunks; only block indices and small stats travel.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from pipeline.core.blending import Accumulator, importance_map
from pipeline.core.sinks import LabelSink
from pipeline.core.tiling import Block, BlockPlan
from pipeline.engine.predictor import Predictor
from pipeline.engine.runner import BlockInput, BlockRunner, Prefetch, finish_block, merge_seams
from pipeline.execution.preprocess import Preprocessor
from pipeline.execution.workstore import Index, WorkStore
from pipeline.formats.source import SceneSource


@dataclass(frozen=True)
class SceneTask:
    """Everything a worker needs to run blocks of one scene."""

    source: SceneSource
    bundle_path: str
    bundle_hash: str
    work_dir: str
    spatial_shape: tuple[int, ...]
    patch_size: tuple[int, ...]
    overlap: float
    block_size: tuple[int, ...]
    classes: int
    preprocessor: Preprocessor
    blend: str = "gaussian"
    sigma_scale: float = 0.125
    batch_size: int = 4
    device: str = "cpu"
    tta: bool = False
    activation: str = "softmax"
    probabilities: bool = False
    nodata_label: int = 255

    @cached_property
    def plan(self) -> BlockPlan:
        return BlockPlan.build(self.spatial_shape, self.patch_size, self.overlap, self.block_size)


@dataclass
class TaskStats:
    blocks: int = 0
    windows: int = 0
    skipped: int = 0
    read_s: float = 0.0
    compute_s: float = 0.0
    merged: int = 0
    worker: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


_cache_lock = threading.Lock()
_models: dict[tuple[str, str, str], Any] = {}
_scenes: dict[SceneSource, Any] = {}


def cached_model(bundle_path: str, bundle_hash: str, device: str) -> Any:
    """The bundle's network, built once per worker process and reused across tasks and scenes."""
    key = (bundle_path, bundle_hash, device)
    with _cache_lock:
        if key not in _models:
            from models.bundle import load_bundle
            from pipeline.engine.predictor import resolve_device

            _models.clear()  # one model per worker at a time keeps memory flat across jobs
            _models[key] = load_bundle(bundle_path).build(device=resolve_device(device))
        return _models[key]


def cached_scene(source: SceneSource) -> Any:
    with _cache_lock:
        if source not in _scenes:
            if len(_scenes) > 4:
                _scenes.pop(next(iter(_scenes))).close()
            _scenes[source] = source.open()
        return _scenes[source]


def read_block(task: SceneTask, scene: Any, block: Block) -> BlockInput:
    """Raw pixels of the block's read region (normalised window by window), with its nodata mask."""
    if hasattr(scene, "read_with_nodata"):  # one read of the pixels instead of two
        raw, nodata = scene.read_with_nodata(block.read)
    else:
        raw, nodata = scene.read(block.read), scene.read_nodata(block.read)
    pre = task.preprocessor
    raw = pre.select(raw)
    invalid = pre.invalid(raw, nodata, selected=True)
    return BlockInput(block, raw, invalid if invalid.any() else None, prepare=pre.prepare)


def _canvas(task: SceneTask, block: Block) -> tuple[np.ndarray, np.ndarray | None, LabelSink]:
    labels = np.full(block.write.shape, task.nodata_label, dtype=np.uint8)
    probs = np.zeros((task.classes, *block.write.shape), np.uint8) if task.probabilities else None
    sink = LabelSink(labels, nodata_label=task.nodata_label, probabilities=probs, origin=block.write.start)
    return labels, probs, sink


def phase1(
    task: SceneTask,
    indices: Iterable[Index],
    *,
    predictor: Predictor | None = None,
    on_block: Callable[[Index], None] | None = None,
) -> TaskStats:
    """Compute the windows of the given blocks (batched across blocks); persist each block's result."""
    store = WorkStore(task.work_dir)
    scene = cached_scene(task.source)
    plan = task.plan
    if predictor is None:
        model = cached_model(task.bundle_path, task.bundle_hash, task.device)
        predictor = Predictor(model, device=task.device, tta=task.tta, activation=task.activation)
    stats = TaskStats()
    todo = [plan.block(i) for i in indices if not store.has_block(tuple(i))]

    def done(block_input: BlockInput, acc: Accumulator | None, channels: int) -> None:
        block = block_input.block
        labels, probs, sink = _canvas(task, block)
        pieces = finish_block(plan, block_input, acc, channels, sink)
        inner = block.interior.slices(block.write.start)
        store.put_block(
            block.index,
            block.interior,
            labels[inner],
            None if probs is None else probs[(slice(None), *inner)],
            pieces,
        )
        stats.blocks += 1
        if on_block is not None:
            on_block(block.index)

    def timed_read(block: Block) -> BlockInput:
        t = time.perf_counter()
        out = read_block(task, scene, block)
        stats.read_s += time.perf_counter() - t
        return out

    runner = BlockRunner(
        plan,
        predictor,
        importance_map(plan.roi, task.blend, task.sigma_scale, task.overlap),
        batch_size=task.batch_size,
        on_done=done,
        channels=task.classes,
    )
    t0 = time.perf_counter()
    runner.run(Prefetch(todo, timed_read))
    stats.compute_s = time.perf_counter() - t0 - stats.read_s
    stats.windows, stats.skipped = runner.windows_run, runner.windows_skipped
    return stats


def phase2(task: SceneTask, index: Index, store: WorkStore | None = None) -> None:
    """Merge one block's seam band and write its whole chunk once (so a rerun simply overwrites it)."""
    store = store or WorkStore(task.work_dir)
    if store.is_merged(index):
        return
    plan = task.plan
    block = plan.block(index)
    labels, probs, sink = _canvas(task, block)
    own = store.get_block(index)
    inner = block.interior.slices(block.write.start)
    if not block.interior.empty:
        labels[inner] = own["labels"]
        if probs is not None:
            probs[(slice(None), *inner)] = own["probs"]
    merge_seams(plan, block, task.classes, sink, store.pieces)
    store.labels()[block.write.slices()] = labels
    if probs is not None:
        out = store.probabilities()
        assert out is not None
        out[(slice(None), *block.write.slices())] = probs
    store.mark_merged(index)


def ready_to_merge(plan: BlockPlan, store: WorkStore, index: Index) -> bool:
    return all(store.has_block(c) for c in plan.contributors(index))


def release(plan: BlockPlan, store: WorkStore, index: Index) -> None:
    """Drop a block's phase-1 file once every block that reads it has merged."""
    if all(store.is_merged(c) for c in plan.consumers(index)):
        store.drop_block(index)

"""The two kinds of block task of a scene job, as plain functions any executor can call.

``compute_blocks`` runs a block's windows through the model, finalises its interior and stores the
partial sums of its seam bands; ``merge_block`` adds up a block's seam band once every contributor is
stored, and writes the block's whole chunk. A ``SceneTask`` is small and picklable: paths and
numbers, never pixels or tensors. The caller hands over the open scene and the built model (the job
in its own process, a worker plugin on a Dask worker); these functions never load either.
"""

from __future__ import annotations

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
from pipeline.engine.prefetch import Prefetch
from pipeline.engine.runner import BlockInput, BlockRunner
from pipeline.engine.seams import finish_block, merge_seams
from pipeline.execution.overlap import WriteBehind, parallel_reads
from pipeline.execution.preprocess import Preprocessor
from pipeline.execution.stages import Stages
from pipeline.execution.thumbnail import put_image_samples, put_label_tally
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
    score_activation: str = "none"  # applied to blended scores (probability outputs) instead of windows
    model_options: tuple[tuple[str, Any], ...] = ()  # how a worker reopens the model: trust_code, ...
    trust_pickle: bool = False  # ... and whether it may unpickle its checkpoint (the job's --trust-pickle)
    probabilities: bool = False
    scores_dtype: str = "uint8"  # of the stored probabilities: uint8 (p * 255), or float32 when inverted
    nodata_label: int = 255
    amp: str = "auto"  # CUDA options (Predictor); the CPU path ignores them
    channels_last: bool = False
    compile: bool = False
    grid: str = "monai"  # the window grid rule: MONAI's, or nnU-Net's (its models' own)
    # nnU-Net's float16 sums (pipeline.core.blending.HalfAccumulator): the scene axes in the network's
    # order, and how many folds the model's output holds side by side; None: float32 sums
    accumulate_order: tuple[int, ...] | None = None
    fold_groups: int = 1

    @property
    def sums_channels(self) -> int:
        """Planes of the weighted sums: the classes, once per fold when the folds are summed apart."""
        return self.classes * self.fold_groups

    @cached_property
    def plan(self) -> BlockPlan:
        return BlockPlan.build(self.spatial_shape, self.patch_size, self.overlap, self.block_size, self.grid)


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
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage (stages.py)


def read_block(task: SceneTask, scene: Any, block: Block) -> BlockInput:
    """Raw pixels of the block's read region (normalised window by window), with its nodata mask."""
    pre = task.preprocessor
    if pre.before_resampling:  # nnU-Net: the reader normalises the file's voxels, then resamples
        x = scene.read(block.read, prepare=pre.native_input, value_range=pre.native_range)
        put_image_samples(task.work_dir, block.index, block.read, x, task.spatial_shape)
        invalid = ~np.isfinite(x).all(axis=0)
        if invalid.any():
            x[:, invalid] = 0.0
        return BlockInput(block, x, invalid if invalid.any() else None)
    if hasattr(scene, "read_with_nodata"):  # one read of the pixels instead of two
        raw, nodata = scene.read_with_nodata(block.read)
    else:
        raw, nodata = scene.read(block.read), scene.read_nodata(block.read)
    # the quicklook's share of this block, taken while the pixels are here (no second pass later)
    put_image_samples(task.work_dir, block.index, block.read, raw, task.spatial_shape)
    raw = pre.select(raw)
    invalid = pre.invalid(raw, nodata, selected=True)
    mask = pre.norm_mask(raw, block.read)  # nnU-Net's non-zero mask, holes filled (else None)
    return BlockInput(
        block, raw, invalid if invalid.any() else None, prepare=pre.prepare, mask=mask, prepare_into=True
    )


def _canvas(task: SceneTask, block: Block) -> tuple[np.ndarray, np.ndarray | None, LabelSink]:
    labels = np.full(block.write.shape, task.nodata_label, dtype=np.uint8)
    probs = np.zeros((task.classes, *block.write.shape), task.scores_dtype) if task.probabilities else None
    sink = LabelSink(
        labels,
        nodata_label=task.nodata_label,
        probabilities=probs,
        origin=block.write.start,
        activation=task.score_activation,
        folds=task.fold_groups,
    )
    return labels, probs, sink


def make_predictor(task: SceneTask, model: Any) -> Predictor:
    """The model as the task runs it (device, flips, output activation)."""
    return Predictor(
        model,
        device=task.device,
        tta=task.tta,
        activation=task.activation,
        amp={"auto": None, "off": False}.get(task.amp, task.amp),
        channels_last=task.channels_last,
        compile=task.compile,
    )


def compute_blocks(
    task: SceneTask,
    indices: Iterable[Index],
    *,
    scene: Any,
    predict: Callable[[np.ndarray], np.ndarray],
    on_block: Callable[[Index], None] | None = None,
) -> TaskStats:
    """Compute the windows of the given blocks (batched across blocks); persist each block's result.

    ``predict`` is a :class:`Predictor` (or any callable of its shape) over the model the caller built.
    """
    store = WorkStore(task.work_dir)
    plan = task.plan
    stats = TaskStats()
    stages = Stages()
    todo = [plan.block(i) for i in indices if not store.has_block(tuple(i))]
    predict = stages.wrap("model", predict)

    writer = WriteBehind()  # the block's file and the merges it makes ready: off the model's path

    def done(block_input: BlockInput, acc: Accumulator | None, channels: int) -> None:
        block = block_input.block
        labels, probs, sink = _canvas(task, block)
        with stages.timed("blend"):  # the interior's division and argmax
            pieces = finish_block(plan, block_input, acc, channels, sink)
        inner = block.interior.slices(block.write.start)
        own = labels[inner], None if probs is None else probs[(slice(None), *inner)]
        held = [pieces]  # let go once on disk: the merges below read what they need from there

        def write() -> None:
            with stages.timed("write_blocks"):
                store.put_block(block.index, block.interior, *own, held.pop())
            stats.blocks += 1
            if on_block is not None:
                on_block(block.index)

        writer.submit(write)

    strips = parallel_reads(scene)  # the read ahead on a few threads: feeds the model when input-bound
    source = scene if strips is None else strips

    def timed_read(block: Block) -> BlockInput:
        t = time.perf_counter()
        out = read_block(task, source, block)
        stats.read_s += time.perf_counter() - t
        if out.prepare is not None:
            out.prepare = stages.wrap("preprocess", out.prepare)
        return out

    runner = BlockRunner(
        plan,
        predict,
        importance_map(plan.roi, task.blend, task.sigma_scale, task.overlap),
        batch_size=task.batch_size,
        on_done=done,
        channels=task.sums_channels,
        order=task.accumulate_order,
    )
    t0 = time.perf_counter()
    try:
        runner.run(Prefetch(todo, timed_read))
    finally:
        try:
            writer.close()
        finally:
            if strips is not None:
                strips.close()
    stats.compute_s = time.perf_counter() - t0 - stats.read_s
    stats.windows, stats.skipped = runner.windows_run, runner.windows_skipped
    stages.add("read", stats.read_s)
    stages.add("blend", runner.blend_s)
    stats.stages = stages.as_dict()
    return stats


def merge_block(task: SceneTask, index: Index, store: WorkStore | None = None) -> None:
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
    ordered = None  # nnU-Net's float16 sums replay window shares: their weight is the importance map
    if task.accumulate_order is not None:
        weights = importance_map(plan.roi, task.blend, task.sigma_scale, task.overlap)
        ordered = (weights, task.accumulate_order)
    merge_seams(plan, block, task.sums_channels, sink, lambda c: store.pieces(c, block.seam), ordered)
    store.labels()[block.write.slices()] = labels
    if probs is not None:
        out = store.probabilities()
        assert out is not None
        out[(slice(None), *block.write.slices())] = probs
    put_label_tally(task.work_dir, index, block.write, labels, task.spatial_shape)
    store.mark_merged(index)


def ready_to_merge(plan: BlockPlan, store: WorkStore, index: Index) -> bool:
    return all(store.has_block(c) for c in plan.contributors(index))


def release(plan: BlockPlan, store: WorkStore, index: Index) -> None:
    """Drop a block's phase-1 file once every block that reads it has merged."""
    if all(store.is_merged(c) for c in plan.consumers(index)):
        store.drop_block(index)

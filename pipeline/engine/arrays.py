"""In-memory entry points: ``infer_array`` (blended scores) and ``infer_labels`` (argmax only).

Both run the same block machinery as big jobs: a sweep over the block grid in which each window is
computed once, interiors are finalised at once and seams are merged as soon as their contributors are
done. Inputs may be any sliceable array-like (numpy, memmap, zarr), so scenes larger than memory work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.core.blending import importance_map
from pipeline.core.sinks import LabelSink, ScoreSink, Sink, read_padded, read_padded_mask
from pipeline.core.tiling import Block, BlockPlan, default_block_size
from pipeline.engine.predictor import Predictor
from pipeline.engine.prefetch import Prefetch
from pipeline.engine.runner import BlockInput, BlockRunner
from pipeline.engine.seams import MemorySeams, SweepMerger


@dataclass
class RunStats:
    """What a sweep did: for benchmarks, reports and tests."""

    windows_in_grid: int
    windows_run: int
    windows_skipped: int
    blocks: int
    block_size: tuple[int, ...]
    peak_seam_bytes: int


def _as_tuple(value: int | Sequence[int], dims: int, name: str) -> tuple[int, ...]:
    out = (int(value),) * dims if isinstance(value, (int, np.integer)) else tuple(int(v) for v in value)
    if len(out) != dims or min(out) < 1:
        raise ValueError(f"{name} {value!r} must be a positive int or {dims} positive ints")
    return out


def _plan(
    shape: Sequence[int],
    patch_size: int | Sequence[int],
    overlap: float,
    block_size: int | Sequence[int] | None,
    channels: int,
    grid: str = "monai",
) -> BlockPlan:
    spatial = tuple(int(n) for n in shape[1:])
    roi = _as_tuple(patch_size, len(spatial), "patch_size")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap {overlap} must be in [0, 1)")
    blocks = (
        default_block_size(spatial, roi, channels)
        if block_size is None
        else _as_tuple(block_size, len(spatial), "block_size")
    )
    return BlockPlan.build(spatial, roi, overlap, blocks, grid)


def sweep(
    image: Any,
    predict: Callable[[np.ndarray], np.ndarray],
    plan: BlockPlan,
    sink: Sink,
    *,
    blend: str = "gaussian",
    sigma_scale: float = 0.125,
    overlap: float = 0.25,
    batch_size: int = 4,
    mask: Any = None,
    channels: int | None = None,
    read: Callable[[Block], BlockInput] | None = None,
    seam_budget_bytes: int = 64 * 2**20,
    order: tuple[int, ...] | None = None,
) -> RunStats:
    """Run every block of ``plan`` in sweep order, reading ahead in a thread, into ``sink``; with
    ``order``, float16 sums as nnU-Net's (``BlockRunner.order``)."""

    def read_array(block: Block) -> BlockInput:
        nodata = read_padded_mask(mask, block.read) if mask is not None else None
        return BlockInput(block, read_padded(image, block.read), nodata)

    seams = MemorySeams(seam_budget_bytes)
    weights = importance_map(plan.roi, blend, sigma_scale, overlap)
    merger = SweepMerger(plan, sink, seams, None if order is None else (weights, order))
    runner = BlockRunner(
        plan,
        predict,
        weights,
        batch_size=batch_size,
        on_done=merger,
        channels=channels,
        order=order,
    )
    try:
        runner.run(Prefetch(plan.blocks(), read or read_array))
    finally:
        seams.close()
    return RunStats(
        plan.window_count,
        runner.windows_run,
        runner.windows_skipped,
        int(np.prod(plan.grid_shape)),
        plan.block_size,
        merger.peak_seam_bytes,
    )


def _predictor(model: Any, device: str, tta: bool, activation: str) -> Predictor:
    return (
        model
        if isinstance(model, Predictor)
        else Predictor(model, device=device, tta=tta, activation=activation)
    )


def _out_channels(model: Any) -> int | None:
    inner = model.model if isinstance(model, Predictor) else model
    value = getattr(inner, "out_channels", None)
    return int(value) if isinstance(value, (int, np.integer)) else None


@dataclass(frozen=True)
class _Settings:
    patch_size: int | Sequence[int]
    overlap: float
    blend: str
    sigma_scale: float
    batch_size: int
    block_size: int | Sequence[int] | None
    device: str
    tta: bool
    activation: str
    grid: str = "monai"


def _infer(image: Any, model: Any, make_sink: Callable[[BlockPlan], Any], s: _Settings, mask: Any) -> Any:
    """The sweep both public functions run; they differ only in the sink."""
    predict = _predictor(model, s.device, s.tta, s.activation)
    channels = _out_channels(model)
    plan = _plan(image.shape, s.patch_size, s.overlap, s.block_size, channels or 16, s.grid)
    sink = make_sink(plan)
    sweep(image, predict, plan, sink, blend=s.blend, sigma_scale=s.sigma_scale, overlap=s.overlap,
          batch_size=s.batch_size, mask=mask, channels=channels)  # fmt: skip
    return sink


def infer_array(
    image: Any,
    model: Callable[[torch.Tensor], Any],
    *,
    patch_size: int | Sequence[int],
    overlap: float = 0.25,
    blend: str = "gaussian",
    sigma_scale: float = 0.125,
    batch_size: int = 4,
    block_size: int | Sequence[int] | None = None,
    device: str = "cpu",
    mask: Any = None,
    tta: bool = False,
    activation: str = "none",
    out: Any = None,
    grid: str = "monai",
) -> np.ndarray:
    """Blended float32 scores ``(K, *spatial)`` for a ``(C, *spatial)`` image.

    Equal to MONAI's ``sliding_window_inference`` with the same ``roi``/``overlap``/``mode``/
    ``sigma_scale``, whatever ``block_size`` is (``grid="nnunet"`` with ``blend="nnunet"``: nnU-Net's window
    grid and gaussian instead). ``mask`` (spatial, True = no data) skips windows that
    lie wholly in it; pixels no computed window covers get NaN.
    """
    settings = _Settings(
        patch_size, overlap, blend, sigma_scale, batch_size, block_size, device, tta, activation, grid
    )
    sink = _infer(image, model, lambda plan: ScoreSink(out, plan.spatial_shape), settings, mask)
    return sink.out


def infer_labels(
    image: Any,
    model: Callable[[torch.Tensor], Any],
    *,
    patch_size: int | Sequence[int],
    overlap: float = 0.25,
    blend: str = "gaussian",
    sigma_scale: float = 0.125,
    batch_size: int = 4,
    block_size: int | Sequence[int] | None = None,
    device: str = "cpu",
    mask: Any = None,
    nodata_label: int = 255,
    tta: bool = False,
    activation: str = "none",
    out: Any = None,
    grid: str = "monai",
) -> Any:
    """uint8 argmax labels ``(*spatial)``, never holding the ``(K, *spatial)`` scores.

    ``out`` may be a zarr array or memmap so that neither input nor output need fit in memory.
    Pixels in ``mask`` (or covered by no computed window) get ``nodata_label``.
    """

    def label_sink(plan: BlockPlan) -> LabelSink:
        canvas = np.empty(plan.spatial_shape, np.uint8) if out is None else out
        return LabelSink(canvas, nodata_label=nodata_label)

    settings = _Settings(
        patch_size, overlap, blend, sigma_scale, batch_size, block_size, device, tta, activation, grid
    )
    return _infer(image, model, label_sink, settings, mask).out

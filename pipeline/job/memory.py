"""Peak RSS of a worker process: what ``tilewise plan`` promises and what a run then reports.

A worker's peak is its baseline (Python, torch, GDAL, the model: measured, never guessed) plus the
larger of two phases. While blocks run it holds one accumulator (:func:`sums_bytes`: ``K + 1``
float32 planes over a block's footprint, or nnU-Net's float16 sums of each fold and every window's
share of the seams), up to three input blocks in the source dtype (retiring, computing, read ahead;
see docs/architecture.md), and the batches in flight with the network's activations. While outputs
are written it may hold the whole label raster (polygons of a scene up to 64 Mpx, small-object
removal) or, for volumes, the label and score volumes mapped back to the file's grid.
"""

from __future__ import annotations

import math
import os
import resource
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MB = 2**20
# What a run's process holds at its first block beyond the modules the plan loads: Prefect's flow- and
# task-run engine, its API client and log and event workers (measured on the S2 demo: RSS at the first
# scene of a `tilewise run` minus the plan's baseline, 108 MB).
FLOW_ENGINE_MB = 110.0
WHOLE_POLYGON_PX = 64 * 2**20  # pipeline.formats.vector.WHOLE_ARRAY_MAX_PX, without importing fiona


def rss_mb() -> float:
    """This process's resident set now."""
    import psutil

    return float(psutil.Process().memory_info().rss) / MB


def peak_rss_mb() -> float:
    """This process's peak resident set so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak) / (MB if sys.platform == "darwin" else 1024)


def torch_threads() -> int:
    """The intra-op threads torch will start with, without importing it: ``OMP_NUM_THREADS``, else
    the physical cores (torch's own default)."""
    import psutil

    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)


def cuda_visible(device: str) -> bool:
    """Whether a job on ``device`` runs on CUDA, without importing torch: ``auto`` looks for an NVIDIA
    driver's GPUs, a visible device and a torch build that is not CPU-only."""
    if device != "auto":
        return device.startswith("cuda")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    gpus = "/proc/driver/nvidia/gpus"
    if not os.path.isdir(gpus) or not os.listdir(gpus):
        return False
    from importlib.metadata import PackageNotFoundError, version

    try:
        return "+cpu" not in version("torch")
    except PackageNotFoundError:
        return False


def gdal_cache_mb() -> float:
    """GDAL's block cache in a job: ``GDAL_CACHEMAX`` (MB, or a percentage of RAM) or 64 MB."""
    value = os.environ.get("GDAL_CACHEMAX", "").strip()
    if value.endswith("%"):
        import psutil

        return float(value[:-1]) / 100 * psutil.virtual_memory().total / MB
    try:
        return float(value) if value else 64.0
    except ValueError:
        return 64.0


OPAQUE = {"torchscript": "TorchScript", "onnx": "ONNX"}  # a graph whose layers the plan cannot see


def unseen_activations(architecture: dict[str, Any]) -> str:
    """The plan's note for a model whose activations it cannot count ("" when it can)."""
    kind = OPAQUE.get(str(architecture.get("name", "")).lower())
    return f"{kind} model: its activations are not counted" if kind else ""


# pipeline.core.sinks.HALF_SLAB_PIXELS, which the plan cannot import (it loads torch)
HALF_SLAB_PIXELS = 1 << 20


@dataclass(frozen=True)
class Sums:
    """How a model's blocks accumulate: float32 sums of ``classes`` (``Accumulator``), or nnU-Net's
    float16 sums (``half``: ``HalfAccumulator``), ``folds`` sets of them when an ensemble's folds are
    blended apart and averaged at the end (``separate_folds``)."""

    classes: int
    folds: int = 1
    half: bool = False

    @classmethod
    def of(cls, config: Any, classes: int) -> Sums:
        """What a bundle's ``accumulate`` and architecture ask for."""
        if getattr(config, "accumulate", "float32") != "nnunet":
            return cls(classes)
        arch = config.architecture
        return cls(classes, int(arch.get("folds", 1)) if arch.get("separate_folds") else 1, True)

    def block_bytes(
        self, spatial: Sequence[int], roi: Sequence[int], overlap: float, block: Sequence[int], grid: str
    ) -> tuple[float, float]:
        """The most any block of the plan holds (bytes): its accumulator, and the partial sums a seam merge
        reads at once (its contributors' shares: itself and its lower neighbours, the one written
        behind among them), which runs beside the next block's accumulator.

        float32 sums and weight span the block's footprint, and what a block hands over (its spill) is
        at most that. nnU-Net's float16 sums and weight (``K * folds + 1`` planes) span it too, and every
        window keeps its float32 share of the spill (the footprint less the interior the block
        finalises) apart, for the merge to replay in nnU-Net's order: per axis these are sums over the
        block's windows (the grid is separable). An upper bound: it counts each share with its weight
        plane and in every spill cell, where ``HalfAccumulator`` recomputes the weight and hands a
        block's leading cells on as float16 sums (``pipeline.core.tile_order``)."""
        from pipeline.core.tiling import make_axis_plans

        planes = self.classes * self.folds + 1
        axes = make_axis_plans(spatial, roi, overlap, block, grid)
        terms = [[_axis_terms(a, k) for k in range(len(a.writes))] for a in axes]
        if not self.half:
            footprint = math.prod(max(t[0] for t in axis) for axis in terms)
            return 4.0 * planes * footprint, 4.0 * planes * footprint
        held = max(
            2.0 * planes * math.prod(t[0] for t in combo) + _shares(planes, combo)
            for combo in _product([sorted(set(axis)) for axis in terms])
        )
        # a merge of block c reads blocks c - 1 and c along each axis: their shares add up axis by axis
        pairs = [sorted({_pair(axis, c) for c in range(len(axis))}) for axis in terms]
        merged = max(_shares(planes, combo) for combo in _product(pairs))
        return held, merged


def _pair(axis: list[tuple[int, int, int]], c: int) -> tuple[int, int, int]:
    """The per-axis sums of blocks ``c - 1`` and ``c`` (the contributors of a merge along one axis)."""
    both = axis[max(c - 1, 0) : c + 1]
    return 0, sum(t[1] for t in both), sum(t[2] for t in both)


def _shares(planes: int, combo: Sequence[tuple[int, int, int]]) -> float:
    """float32 bytes of the windows' shares of the spill: over the windows, their voxels in the scene
    less those in the interior (products of the per-axis sums)."""
    return 4.0 * planes * (math.prod(t[1] for t in combo) - math.prod(t[2] for t in combo))


def _axis_terms(axis: Any, k: int) -> tuple[int, int, int]:
    """Block ``k`` along one axis: its footprint's length, and over the windows it owns the sum of their
    lengths inside the scene and inside its interior."""
    lo, hi = axis.owned(k)
    a, b = axis.footprint(k)
    i0, i1 = axis.interior(k)
    starts = axis.starts[lo:hi]
    inside = sum(max(0, min(s + axis.roi, axis.size) - max(s, 0)) for s in starts)
    interior = sum(max(0, min(s + axis.roi, i1) - max(s, i0)) for s in starts)
    return b - a, inside, interior


def _product(per_axis: Sequence[Sequence[tuple[int, int, int]]]) -> list[tuple[tuple[int, int, int], ...]]:
    import itertools

    return list(itertools.product(*per_axis))


def _activation_planes(architecture: dict[str, Any], dims: int) -> float:
    """Float32 planes a U-Net-like forward holds per input pixel, all levels together: each level
    keeps about four tensors of its width (conv, norm, activation, skip) at ``1 / 2^(dims*level)``.
    None for an opaque graph (TorchScript, ONNX): the plan says so rather than guess a U-Net."""
    if unseen_activations(architecture):
        return 0.0
    features = architecture.get("features") or architecture.get("channels") or [32, 64, 128, 256]
    return sum(4 * f / 2 ** (dims * level) for level, f in enumerate(features))


def estimate_peak_mb(
    *,
    baseline_mb: float,
    spatial: Sequence[int],
    roi: Sequence[int],
    block: Sequence[int],
    channels: int,
    classes: int,
    itemsize: int,
    batch_size: int,
    lanes: int,
    architecture: dict[str, Any],
    polygons: bool = False,
    whole_labels: bool = False,
    clean_up: bool = False,
    probabilities: bool = False,
    gdal_cache_mb: float = 64.0,
    sums: tuple[float, float] | None = None,
    folds: int = 1,
) -> float:
    """Peak RSS (MB) of one worker process running one scene at a time. ``gdal_cache_mb`` is GDAL's
    block cache, which a run fills (reading the scene, writing the COG) and the baseline has not.
    ``sums``: a block's accumulator and the partial sums a seam merge reads beside it
    (:meth:`Sums.block_bytes`; default float32 sums of ``classes``, one block's spill merged at a
    time); ``folds``: the network's outputs per class (an ensemble's folds side by side)."""
    dims = len(spatial)
    footprint = math.prod(min(b + r, max(n, r)) for n, r, b in zip(spatial, roi, block, strict=True))
    # the accumulator and three source blocks (retiring, computing, read ahead), then what the pass
    # keeps beside them: the float32 preprocessed block and the one read ahead, the block being written
    # behind and merged (the partial sums handed on, at most an accumulator) and its float32 scores. Measured:
    # 8192² and 16384² scenes with a 1x1 model peak ~570 MB above the baseline with 1792² blocks
    # (numpy's share seen by tracemalloc, the rest torch's), flat in the scene size.
    held, merged = sums if sums is not None else (4.0 * (classes + 1) * footprint,) * 2
    # float32 scores: of the whole block, or of one slab at a time for float16 sums (``LabelSink``)
    scores = 4 * classes * (footprint if sums is None else min(footprint, HALF_SLAB_PIXELS))
    blocks = held + merged + footprint * (3 * channels * itemsize + 8 * channels) + scores
    window = math.prod(roi)
    outputs_per_window = channels + classes * folds + _activation_planes(architecture, dims)
    batches = lanes * batch_size * window * 4 * outputs_per_window
    pixels = math.prod(spatial)
    outputs = 0.0
    if dims == 2 and (whole_labels or (polygons and pixels <= WHOLE_POLYGON_PX)):
        outputs = pixels * 6  # labels, and GDAL's int32 copy for polygonising
    elif dims == 3:
        outputs = pixels * 2 + (pixels * classes * 8 if probabilities else 0)  # reoriented copies
    if clean_up:  # the block-wise component clean-up: a pass's bytes a pixel of a block, one thread
        from pipeline.execution.component_pixels import PASS_BYTES_PER_PIXEL

        block_pixels = math.prod(min(b, n) for n, b in zip(spatial, block, strict=True))
        outputs = max(outputs, PASS_BYTES_PER_PIXEL * block_pixels)
    return baseline_mb + gdal_cache_mb + max(blocks + batches, outputs) / MB


def plan_peak_mb(
    scene: Any,
    bundle: Any,
    config: Any,
    roi: tuple[int, ...],
    block: tuple[int, ...],
    *,
    baseline_mb: float,
    overlap: float,
    light: bool = False,
) -> float:
    """The peak RSS ``tilewise plan`` promises for this scene in one worker process (``estimate_peak_mb``).
    ``light``: torch's threads and CUDA are read from the system, not from torch (the plan)."""
    import numpy as np

    from pipeline.engine.lanes import cpu_lanes, lanes_for

    batch = config.execution.batch_size
    device = config.execution.device
    if light:
        cpu, threads = not cuda_visible(device), torch_threads()
    else:
        cpu = device == "cpu" or (device == "auto" and not _has_cuda())
        threads = cpu_lanes() if cpu else 1
    lanes = lanes_for(threads, batch * math.prod(roi)) if cpu else 1
    spatial = tuple(int(n) for n in scene.shape[1:])
    cfg = bundle.config
    sums = Sums.of(cfg, bundle.num_classes)
    return estimate_peak_mb(
        baseline_mb=baseline_mb,
        spatial=spatial,
        roi=roi,
        block=block,
        channels=len(bundle.config.inputs.channels),
        classes=bundle.num_classes,
        itemsize=np.dtype(scene.dtype).itemsize,
        batch_size=batch,
        lanes=lanes,
        architecture=dict(bundle.config.architecture),
        polygons=config.outputs.polygons,
        clean_up=config.outputs.min_object_size > 0 or config.outputs.keep_largest,
        probabilities=config.outputs.probabilities,
        gdal_cache_mb=gdal_cache_mb(),
        sums=sums.block_bytes(spatial, roi, overlap, block, cfg.grid) if sums.half else None,
        folds=sums.folds,
    )


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())

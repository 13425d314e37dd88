"""Passes over a whole scene before its block pass: where to sample it, how to read all of it in slabs
of bounded size, and the box of its non-zero voxels that nnU-Net crops a case to.

Each reads the scene once and keeps only a few numbers or boxes, so memory stays bounded whatever the
scene's size, and every block then sees the same statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.core.box import Box
from pipeline.formats.scene import Scene
from pipeline.formats.source import SceneSource

SAMPLE_BUDGET = 1 << 20  # pixels per channel read for scene statistics
SAMPLE_WINDOW = {2: 64, 3: 16}  # edge of each sample window


def sample_boxes(spatial_shape: Sequence[int], budget: int = SAMPLE_BUDGET) -> list[Box]:
    """Small windows spread evenly over the scene (first and last flush with its edges).

    Covers the whole scene in one box when it fits the budget; otherwise ``budget`` pixels at most.
    """
    shape = tuple(int(s) for s in spatial_shape)
    if math.prod(shape) <= budget:
        return [Box.from_shape(shape)]
    edge = SAMPLE_WINDOW.get(len(shape), 16)
    win = tuple(min(edge, s) for s in shape)
    max_windows = max(1, budget // math.prod(win))
    counts = [math.ceil(s / w) for s, w in zip(shape, win, strict=True)]
    scale = (max_windows / math.prod(counts)) ** (1.0 / len(shape))
    counts = [max(1, min(c, math.floor(c * scale))) for c in counts]
    while math.prod(counts) > max_windows:
        counts[counts.index(max(counts))] -= 1
    starts = [
        np.linspace(0, s - w, n).round().astype(int) for s, w, n in zip(shape, win, counts, strict=True)
    ]
    return [
        Box.from_shape(win, start=tuple(int(v) for v in pos))
        for pos in np.stack(np.meshgrid(*starts, indexing="ij"), axis=-1).reshape(-1, len(shape))
    ]


def slabs(spatial: Sequence[int], budget: int = SAMPLE_BUDGET) -> list[Box]:
    """The scene cut along its first axis into slabs of about ``budget`` voxels: an exact pass."""
    step = max(1, budget // max(1, math.prod(spatial[1:])))
    rest = tuple(int(n) for n in spatial[1:])
    return [
        Box((a, *(0,) * len(rest)), (min(a + step, int(spatial[0])), *rest))
        for a in range(0, int(spatial[0]), step)
    ]


def nonzero_box(scene: Scene, budget: int = SAMPLE_BUDGET) -> Box | None:
    """The bounding box of voxels non-zero in any channel (nnU-Net's ``crop_to_nonzero``; filling
    holes, as it does, cannot grow a bounding box), or None when it is the whole scene or empty."""
    spatial = tuple(int(n) for n in scene.shape[1:])
    lo, hi = [None] * len(spatial), [None] * len(spatial)
    for box in slabs(spatial, budget):
        hit = (scene.read(box) != 0).any(axis=0)
        for axis in range(len(spatial)):
            along = np.flatnonzero(hit.any(axis=tuple(a for a in range(hit.ndim) if a != axis)))
            if along.size:
                a, b = int(along[0]) + box.start[axis], int(along[-1]) + 1 + box.start[axis]
                lo[axis] = a if lo[axis] is None else min(lo[axis], a)
                hi[axis] = b if hi[axis] is None else max(hi[axis], b)
    if lo[0] is None:
        return None
    found = Box(tuple(lo), tuple(hi))  # type: ignore[arg-type]
    return None if found == Box.from_shape(spatial) else found


def open_cropped(source: SceneSource, bundle_config: Any) -> tuple[SceneSource, Any]:
    """The scene ``source`` names, cropped to its non-zero box where the bundle asks (a NIfTI
    ``crop`` option, so Dask workers reopen it cropped too), and the source that reopens it."""
    scene = source.open()
    if not (bundle_config.inputs.crop_nonzero and hasattr(scene, "unresampled")):
        return source, scene
    try:
        box = nonzero_box(scene.unresampled())
    except BaseException:
        scene.close()
        raise
    if box is None:
        return source, scene
    scene.close()
    cropped = SceneSource(source.kind, source.uris, (*source.options, ("crop", (box.start, box.stop))))
    return cropped, cropped.open()

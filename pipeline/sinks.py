"""Where finalised regions go: a score array, or labels computed on the fly (argmax while it goes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.box import Box


def read_padded(array: Any, box: Box, fill: float = 0.0, dtype: Any = np.float32) -> np.ndarray:
    """``array[:, box]`` for a ``(C, *spatial)`` array-like (numpy, memmap, zarr), ``fill`` outside."""
    spatial = tuple(array.shape[1:])
    inside = box.intersect(Box.from_shape(spatial))
    out = np.full((array.shape[0], *box.shape), fill, dtype=dtype)
    if not inside.empty:
        out[(slice(None), *inside.slices(box.start))] = array[(slice(None), *inside.slices())]
    return out


def read_padded_mask(mask: Any, box: Box) -> np.ndarray:
    """``mask[box]`` for a spatial boolean array-like, True (no data) outside it."""
    inside = box.intersect(Box.from_shape(tuple(mask.shape)))
    out = np.ones(box.shape, dtype=bool)
    if not inside.empty:
        out[inside.slices(box.start)] = np.asarray(mask[inside.slices()], dtype=bool)
    return out


class ScoreSink:
    """Writes blended float32 scores into a ``(K, *spatial)`` array-like.

    Without ``out`` it allocates one at the first write, when K is known.
    """

    def __init__(self, out: Any = None, spatial_shape: tuple[int, ...] = ()) -> None:
        self.out = out
        self.spatial_shape = spatial_shape

    def write(self, box: Box, scores: np.ndarray, covered: np.ndarray) -> None:
        if self.out is None:
            self.out = np.empty((scores.shape[0], *self.spatial_shape), np.float32)
        self.out[(slice(None), *box.slices())] = scores


def argmax_labels(
    scores: np.ndarray, covered: np.ndarray, nodata: np.ndarray | None, nodata_label: int
) -> np.ndarray:
    """uint8 class ids; ``nodata_label`` where no window ran or the caller's mask says no data."""
    labels = np.argmax(np.nan_to_num(scores, nan=-np.inf), axis=0).astype(np.uint8)
    invalid = ~covered if nodata is None else (~covered | nodata)
    labels[invalid] = nodata_label
    return labels


class LabelSink:
    """Writes argmax labels (and optionally uint8 probabilities) without holding the scene's scores.

    ``nodata(box)`` gives the caller's nodata mask for a region; those pixels get ``nodata_label``.
    """

    def __init__(
        self,
        out: Any,
        *,
        nodata_label: int = 255,
        nodata: Callable[[Box], np.ndarray | None] | None = None,
        probabilities: Any = None,
    ) -> None:
        self.out = out
        self.nodata_label = nodata_label
        self.nodata = nodata
        self.probabilities = probabilities
        self.pixels = 0

    def write(self, box: Box, scores: np.ndarray, covered: np.ndarray) -> None:
        mask = self.nodata(box) if self.nodata is not None else None
        self.out[box.slices()] = argmax_labels(scores, covered, mask, self.nodata_label)
        if self.probabilities is not None:
            probs = np.clip(np.nan_to_num(scores, nan=0.0), 0.0, 1.0) * 255.0
            self.probabilities[(slice(None), *box.slices())] = np.rint(probs).astype(np.uint8)
        self.pixels += box.size

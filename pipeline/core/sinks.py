"""Where finalised regions go: a score array, or labels computed on the fly (argmax while it goes)."""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from pipeline.core.blending import finalise, finalise_into, nnunet_finalise
from pipeline.core.box import Box

ARGMAX_SLAB_PIXELS = 1 << 20  # pixels per argmax slab: an 8 MB int64 temporary
HALF_SLAB_PIXELS = 1 << 20  # pixels of float16 sums finished at once: a few MB of float32 scores per class


class Sink(Protocol):
    """Finalises regions from their complete weighted sums ``(K, *box.shape)`` and weight
    ``(*box.shape)``. Each region lies inside one block's write region. The sink divides (or takes
    the argmax) itself, so it can write straight into its destination; it may overwrite ``sums``.
    A pixel of weight 0 is uncovered (no window ran, or no data): its sums mean nothing."""

    def write(self, box: Box, sums: np.ndarray, weight: np.ndarray) -> None: ...


def half_scores(sums: np.ndarray, weight: np.ndarray, folds: int) -> tuple[np.ndarray, np.ndarray]:
    """nnU-Net's float16 sums (``folds * K`` planes) as finished float32 scores with a unit weight, so
    the float32 path below (argmax, division) takes them as they are."""
    return nnunet_finalise(sums, weight, folds), (weight > 0).astype(np.float32)


def slabs(box: Box, pixels: int) -> list[tuple[Box, tuple[slice, ...]]]:
    """``box`` cut along its first axis into parts of about ``pixels`` each, with each part's slices
    relative to ``box``."""
    step = max(1, pixels // max(1, math.prod(box.shape[1:])))
    parts = []
    for a in range(0, box.shape[0], step):
        b = min(a + step, box.shape[0])
        start = (box.start[0] + a, *box.start[1:])
        stop = (box.start[0] + b, *box.stop[1:])
        parts.append((Box(start, stop), (slice(a, b), *(slice(None),) * (box.ndim - 1))))
    return parts


def read_padded(array: Any, box: Box, fill: float = 0.0, dtype: Any = np.float32) -> np.ndarray:
    """``array[:, box]`` for a ``(C, *spatial)`` array-like (numpy, memmap, zarr), ``fill`` outside.

    An in-memory array of the right dtype that covers ``box`` is returned as a view, not copied: the
    engine only reads block pixels (writable ones: torch refuses to wrap read-only memory silently).
    """
    spatial = tuple(array.shape[1:])
    inside = box.intersect(Box.from_shape(spatial))
    if inside == box and type(array) is np.ndarray and array.dtype == dtype and array.flags.writeable:
        return array[(slice(None), *box.slices())]
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

    Without ``out`` it allocates one at the first write, when K is known, or, when one block covers
    the whole scene, adopts that block's sums, divided in place. A numpy (or memmap) ``out``
    receives the division directly, with no intermediate copy.
    """

    def __init__(self, out: Any = None, spatial_shape: tuple[int, ...] = (), folds: int = 1) -> None:
        self.out = out
        self.spatial_shape = spatial_shape
        self.folds = folds  # fold groups of float16 (nnU-Net) sums

    def write(self, box: Box, sums: np.ndarray, weight: np.ndarray) -> None:
        if sums.dtype == np.float16:
            sums, weight = half_scores(sums, weight, self.folds)
        if self.out is None and box.shape == self.spatial_shape and sums.flags.c_contiguous:
            finalise_into(sums, weight, sums)
            self.out = sums
            return
        if self.out is None:
            self.out = np.empty((sums.shape[0], *self.spatial_shape), np.float32)
        where = (slice(None), *box.slices())
        if isinstance(self.out, np.ndarray) and self.out.dtype == np.float32:
            finalise_into(sums, weight, self.out[where])
        else:
            self.out[where] = finalise(sums, weight)


def argmax_labels(sums: np.ndarray, weight: np.ndarray, nodata_label: int) -> np.ndarray:
    """uint8 class ids from weighted sums; ``nodata_label`` where no window ran.

    The argmax is taken over the sums: dividing by a pixel's positive weight keeps the order of its
    classes, so no score array is needed. It runs in slabs along the first axis so its int64 index
    temporary stays small whatever the block size.
    """
    labels = np.empty(weight.shape, dtype=np.uint8)
    step = max(1, ARGMAX_SLAB_PIXELS // max(1, math.prod(weight.shape[1:])))
    for a in range(0, weight.shape[0], step):
        _argmax_into(sums[:, a : a + step], labels[a : a + step])
    np.copyto(labels, np.uint8(nodata_label), where=weight <= 0)
    return labels


def _argmax_into(sums: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = np.argmax(sums, axis=0)``, class by class: numpy's argmax over the first axis
    walks each pixel's classes in a strided inner loop, several times slower than K-1 elementwise
    passes. A later class wins only when strictly greater, so ties go to the first, as in numpy;
    a pixel with a NaN score (where numpy's rule is "the first NaN") takes numpy's own argmax."""
    if sums.shape[0] > 256 or sums.shape[0] == 0:
        out[...] = np.argmax(sums, axis=0)
        return
    best = sums[0].copy()
    out[...] = 0
    greater = np.empty(best.shape, dtype=bool)
    step = np.empty(best.shape, dtype=np.uint8)
    for k in range(1, sums.shape[0]):
        np.greater(sums[k], best, out=greater)
        # where greater, k is above every class so far: a max sets it (faster than a masked copy)
        np.multiply(greater, np.uint8(k), out=step)
        np.maximum(out, step, out=out)
        np.maximum(best, sums[k], out=best)  # NaN in any class leaves NaN here
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(best.sum()):  # a NaN anywhere makes the sum NaN: one cheap pass says there is none
            return
    nan = np.isnan(best)
    if nan.any():
        out[nan] = np.argmax(sums[:, nan], axis=0)


def activate(scores: np.ndarray, activation: str) -> np.ndarray:
    """Softmax over classes or sigmoid of blended scores, in place (for models whose windows give logits:
    MONAI's inferers blend logits and activate afterwards)."""
    if activation == "softmax":
        scores -= scores.max(axis=0, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=0, keepdims=True)
    elif activation == "sigmoid":
        np.negative(scores, out=scores)
        np.exp(scores, out=scores)
        scores += 1.0
        np.reciprocal(scores, out=scores)
    elif activation != "none":
        raise ValueError(f"unknown activation {activation!r}")
    return scores


def quantise(scores: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] as uint8 0-255 (0 where uncovered)."""
    return np.rint(np.clip(np.nan_to_num(scores, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)


class LabelSink:
    """Writes argmax labels (and optionally probabilities: uint8, or exact when the canvas is float)
    without holding the scene's scores.

    ``origin`` is the scene position of ``out[0, ...]``, so a sink can fill one block's canvas.
    """

    def __init__(
        self,
        out: Any,
        *,
        nodata_label: int = 255,
        probabilities: Any = None,
        origin: tuple[int, ...] | None = None,
        activation: str = "none",
        folds: int = 1,
    ) -> None:
        self.folds = folds  # fold groups of float16 (nnU-Net) sums
        self.out = out
        self.nodata_label = nodata_label
        self.probabilities = probabilities
        self.origin = origin
        self.activation = activation  # of the blended scores, for the probabilities only

    def write(self, box: Box, sums: np.ndarray, weight: np.ndarray) -> None:
        if sums.dtype != np.float16:
            self._write(box, sums, weight)
            return
        # float16 sums are finished slab by slab: a whole block's float32 scores (and float16
        # quotients) would be the largest buffers of an nnU-Net block (300 MB for a 512x512x32 slab)
        for part, where in slabs(box, HALF_SLAB_PIXELS):
            self._write(part, *half_scores(sums[(slice(None), *where)], weight[where], self.folds))

    def _write(self, box: Box, sums: np.ndarray, weight: np.ndarray) -> None:
        where = box.slices(self.origin)
        self.out[where] = argmax_labels(sums, weight, self.nodata_label)
        if self.probabilities is not None:
            scores = finalise(sums, weight)
            with np.errstate(
                invalid="ignore", over="ignore"
            ):  # uncovered pixels are NaN; quantise zeroes them
                scores = activate(scores, self.activation)
            if self.probabilities.dtype == np.uint8:
                self.probabilities[(slice(None), *where)] = quantise(scores)
            else:  # exact scores (to be interpolated onto the input's grid), 0 where uncovered
                self.probabilities[(slice(None), *where)] = np.nan_to_num(scores, nan=0.0)

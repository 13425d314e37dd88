"""Importance maps and the accumulator that blends overlapping window predictions.

Gaussian and constant maps come from MONAI's ``compute_importance_map`` so the blend is numerically
MONAI's. ``cosine`` (a Hann taper) and ``crop`` (keep window centres) are ours. All maps are clamped
away from zero, as MONAI does, so every covered pixel has a positive weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from monai.data.utils import compute_importance_map

from pipeline.box import Box

BLEND_MODES = ("gaussian", "constant", "cosine", "crop")
MIN_WEIGHT = 1e-3


@lru_cache(maxsize=16)
def importance_map(
    patch_size: tuple[int, ...], mode: str = "gaussian", sigma_scale: float = 0.125, overlap: float = 0.25
) -> np.ndarray:
    """Float32 weights of shape ``patch_size`` (read-only, cached)."""
    if mode in ("gaussian", "constant"):
        weights = compute_importance_map(
            patch_size, mode=mode, sigma_scale=sigma_scale, device="cpu", dtype=torch.float32
        )
        out = weights.numpy().astype(np.float32)
    elif mode == "cosine":
        out = _separable([np.hanning(n + 2)[1:-1] for n in patch_size])
    elif mode == "crop":
        out = _separable([_centre_profile(n, overlap) for n in patch_size])
    else:
        raise ValueError(f"blend mode {mode!r} is not one of {', '.join(BLEND_MODES)}")
    out = np.maximum(out, max(float(out.min()), MIN_WEIGHT)).astype(np.float32)
    out.setflags(write=False)
    return out


def _separable(profiles: Sequence[np.ndarray]) -> np.ndarray:
    out = np.ones((), dtype=np.float64)
    for p in profiles:
        out = np.multiply.outer(out, p)
    return (out / out.max()).astype(np.float32)


def _centre_profile(n: int, overlap: float) -> np.ndarray:
    """1 over the central ``n * (1 - overlap)`` pixels, ~0 elsewhere: each pixel keeps its central window."""
    keep = max(1, round(n * (1 - overlap)))
    lo = (n - keep) // 2
    profile = np.zeros(n)
    profile[lo : lo + keep] = 1.0
    return profile


class Accumulator:
    """Weighted sums over one block footprint: ``K`` score planes and one weight plane.

    Keeping the weight plane explicit (rather than recomputing it) makes skipped windows and the seam
    merge exact with no special cases: a pixel's value is always ``sum(w * p) / sum(w)`` over the
    windows that really ran.
    """

    def __init__(self, region: Box, channels: int, weights: np.ndarray) -> None:
        self.region = region
        self.weights = weights
        self.sums = np.zeros((channels + 1, *region.shape), dtype=np.float32)
        # torch views of the same memory: in-place multiply-add, multi-threaded, no temporaries
        self._sums = torch.from_numpy(self.sums)
        self._weights = torch.from_numpy(np.array(weights))  # a small writable copy for torch

    def add(self, window: Box, prediction: np.ndarray) -> None:
        """Add one window's ``(K, *roi)`` prediction."""
        where = window.slices(self.region.start)
        self._sums[(slice(None, -1), *where)].addcmul_(torch.from_numpy(prediction), self._weights)
        self._sums[(-1, *where)].add_(self._weights)

    def take(self, box: Box, *, copy: bool = True) -> np.ndarray:
        """The sums over ``box`` (inside the region), ``(K + 1, *box.shape)``; a view if not ``copy``."""
        view = self.sums[(slice(None), *box.slices(self.region.start))]
        return view.copy() if copy else view


def finalise(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blended scores ``(K, *s)`` and the covered mask from weighted sums ``(K + 1, *s)``.

    Pixels no window covered (all their windows were skipped as nodata) get NaN scores.
    """
    weight = sums[-1]
    covered = weight > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = sums[:-1] / weight
    if not covered.all():
        scores[:, ~covered] = np.nan
    return scores.astype(np.float32, copy=False), covered

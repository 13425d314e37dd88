"""Importance maps and the accumulator that blends overlapping window predictions.

Gaussian and constant maps are MONAI's ``compute_importance_map``, op for op in torch, so the blend
is numerically MONAI's (a test holds them bit-equal) without importing MONAI, which costs seconds.
``nnunet`` is nnU-Net's own gaussian (``compute_gaussian``: sigma = patch/8 from a filtered delta,
scaled to 10, rounded to float16, zeros raised to its smallest value), unclamped, so that its models
blend as nnU-Net blends them. ``cosine`` (a Hann taper) and ``crop`` (keep window centres) are ours.
The other maps are clamped away from zero, as MONAI does, so every covered pixel has a positive weight.

``HalfAccumulator`` sums as ``nnUNetPredictor`` does, in float16: see its docstring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
import torch

from pipeline.core.box import Box

BLEND_MODES = ("gaussian", "constant", "cosine", "crop", "nnunet")
ACCUMULATIONS = ("float32", "nnunet")
MIN_WEIGHT = 1e-3


@lru_cache(maxsize=16)
def importance_map(
    patch_size: tuple[int, ...], mode: str = "gaussian", sigma_scale: float = 0.125, overlap: float = 0.25
) -> np.ndarray:
    """Float32 weights of shape ``patch_size`` (read-only, cached)."""
    if mode in ("gaussian", "constant"):
        out = _monai_map(patch_size, mode, sigma_scale).numpy().astype(np.float32)
    elif mode == "cosine":
        out = _separable([np.hanning(n + 2)[1:-1] for n in patch_size])
    elif mode == "crop":
        out = _separable([_centre_profile(n, overlap) for n in patch_size])
    elif mode == "nnunet":
        out = _nnunet_gaussian(patch_size)
        out.setflags(write=False)
        return out
    else:
        raise ValueError(f"blend mode {mode!r} is not one of {', '.join(BLEND_MODES)}")
    out = np.maximum(out, max(float(out.min()), MIN_WEIGHT)).astype(np.float32)
    out.setflags(write=False)
    return out


def _monai_map(patch_size: tuple[int, ...], mode: str, sigma_scale: float) -> torch.Tensor:
    """``monai.data.utils.compute_importance_map`` (MONAI 1.x) with the same torch ops in the same order."""
    if mode == "constant":
        weights = torch.ones(patch_size, dtype=torch.float)
    else:
        for i, n in enumerate(patch_size):
            sigma = n * sigma_scale
            x = torch.arange(start=-(n - 1) / 2.0, end=(n - 1) / 2.0 + 1, dtype=torch.float)
            x = torch.exp(x**2 / (-2 * sigma**2))
            weights = weights.unsqueeze(-1) * x[(None,) * i] if i > 0 else x
    floor = max(torch.min(weights).item(), 1e-3)
    return torch.clamp_(weights.to(torch.float), min=floor)


def _nnunet_gaussian(patch_size: tuple[int, ...]) -> np.ndarray:
    """nnU-Net's ``compute_gaussian(patch, 1/8, value_scaling_factor=10)``; a one-voxel axis (a 2-D
    model over a 3-D volume) is left out of the filter, as nnU-Net filters the 2-D patch only."""
    from scipy.ndimage import gaussian_filter

    plane = tuple(n for n in patch_size if n > 1) or (1,)
    delta = np.zeros(plane)
    delta[tuple(n // 2 for n in plane)] = 1.0
    g = gaussian_filter(delta, [n / 8 for n in plane], 0, mode="constant", cval=0)
    # torch's float64 -> float16 cast, as nnU-Net's ``.to(dtype=torch.float16)`` (numpy's may round otherwise)
    g = torch.from_numpy(g / (g.max() / 10)).to(torch.float16).numpy()
    g[g == 0] = g[g != 0].min()
    return g.astype(np.float32).reshape(patch_size)


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
    """Weighted sums over one block footprint: ``K`` score planes and a separate weight plane.

    Keeping the weight plane explicit (rather than recomputing it) makes skipped windows and the seam
    merge exact with no special cases: a pixel's value is always ``sum(w * p) / sum(w)`` over the
    windows that really ran. Keeping it in its own array lets the score planes be finalised in place
    and handed out as the result, as MONAI does, with no second scene-sized buffer.
    """

    def __init__(
        self, region: Box, channels: int, weights: torch.Tensor, storage: torch.Tensor | None = None
    ) -> None:
        self.region = region
        # torch owns the memory (zero-filled on all intra-op threads, so the pages are touched in one
        # parallel pass rather than one by one inside the multiply-adds); numpy views share it.
        # ``storage`` (a flat float32 tensor from a retired block, ``self.storage``) is zeroed and
        # reused when it is large enough: a fresh block-sized buffer is mmapped (it is above glibc's
        # mmap threshold) and every page of it faulted in again, block after block.
        n = math.prod(region.shape)
        if storage is None or storage.numel() < (channels + 1) * n:
            storage = torch.empty((channels + 1) * n, dtype=torch.float32)
        self.storage = storage
        self._sums = storage[: channels * n].view(channels, *region.shape).zero_()
        self._weight = storage[channels * n : (channels + 1) * n].view(region.shape).zero_()
        self.sums = self._sums.numpy()
        self.weight = self._weight.numpy()
        self._weights = weights  # the importance map as a tensor, shared by every block of a run

    @property
    def nbytes(self) -> int:
        return self.sums.nbytes + self.weight.nbytes

    def add(self, window: Box, prediction: np.ndarray) -> None:
        """Add one window's ``(K, *roi)`` prediction."""
        where = window.slices(self.region.start)
        self._sums[(slice(None), *where)].addcmul_(torch.from_numpy(prediction), self._weights)
        self._weight[where].add_(self._weights)

    def clear(self, nodata: np.ndarray) -> None:
        """Weight 0 where there is no data (``nodata`` over the whole region).

        The sums there are left as they are: every sink treats a pixel of weight 0 as uncovered
        (nodata label, NaN scores) whatever its sums, and so does the seam merge, since a pixel is
        nodata in every block that reaches it. Zeroing the K score planes too cost five masked
        passes per block instead of one. Only the rows that hold nodata are touched.
        """
        rows = np.flatnonzero(nodata.reshape(nodata.shape[0], -1).any(axis=1))
        if rows.size:
            part = slice(int(rows[0]), int(rows[-1]) + 1)
            np.copyto(self.weight[part], 0.0, where=nodata[part])

    def view(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        """The sums ``(K, *box.shape)`` and weight ``(*box.shape)`` over ``box``, as views."""
        where = box.slices(self.region.start)
        return self.sums[(slice(None), *where)], self.weight[where]

    def take(self, box: Box) -> np.ndarray:
        """A copy of the sums and weight over ``box`` stacked as ``(K + 1, *box.shape)`` (a seam piece)."""
        sums, weight = self.view(box)
        return np.concatenate([sums, weight[None]])


class StoredShare(Protocol):
    """A share still on disk: the merge reads it when it gets to it, so it holds one share at a time
    rather than all its contributors' (~260 MB for a 512x512x32 nnU-Net slab)."""

    @property
    def dtype(self) -> np.dtype[Any]: ...

    @property
    def shape(self) -> tuple[int, ...]: ...

    def load(self) -> np.ndarray: ...


# One window's share of a seam: box, its float32 products ``(C, *box)`` (``C + 1`` with the weight
# plane where nodata zeroed it; else the weight is the importance map's, recomputed), its rank. Or a
# block's leading share: box, its float16 sums and weight ``(C + 1, *box)``, rank unused.
Piece = tuple[Box, np.ndarray | StoredShare, tuple[int, ...]]
# partial float32 sums and weight, or a share in nnU-Net's order
SeamPiece = tuple[Box, np.ndarray | StoredShare] | Piece


def loaded(piece: np.ndarray | StoredShare) -> np.ndarray:
    """The share's values, read now if it is still on disk."""
    return piece if isinstance(piece, np.ndarray) else piece.load()


class HalfAccumulator(Accumulator):
    """nnU-Net's float16 sums, reproduced voxel for voxel whatever the block cut.

    ``nnUNetPredictor`` adds each tile's ``prediction * gaussian`` (a float32 product) in place into a
    float16 array, and the gaussian into a float16 weight array, tile after tile in its global order
    (lexicographic over the network's axes). A voxel's sum is then a fixed sequence of float16 roundings
    over the tiles covering it. A block's interior is covered by its own windows only, which the runner
    adds in that order. For the rest of its footprint (the spill, finalised by the seam merge): in the
    ``lead`` cells no other block's window comes first (``pipeline.core.tile_order``), so the float16
    sums there are handed on as they are; in the ``spill`` cells each window's float32 product is kept
    apart with its ``rank`` (the window's start in the network's axis order), so that the merge replays
    every contributor's windows in nnU-Net's order after the leading sums. ``order``: the scene axes in
    the network's axis order.
    """

    def __init__(
        self,
        region: Box,
        channels: int,
        weights: torch.Tensor,
        spill: list[Box],
        order: tuple[int, ...],
        lead: Sequence[Box] = (),
    ) -> None:
        self.region = region
        self._sums = torch.zeros((channels, *region.shape), dtype=torch.float16)
        self._weight = torch.zeros(region.shape, dtype=torch.float16)
        self.sums = self._sums.numpy()
        self.weight = self._weight.numpy()
        self._weights = weights
        self._half = weights.to(torch.float16)  # exact: nnU-Net's gaussian is float16 already
        self.spill, self.order, self.lead = spill, order, list(lead)
        self.pieces: list[Piece] = []
        self._piece_bytes = 0

    @property
    def nbytes(self) -> int:
        return self.sums.nbytes + self.weight.nbytes + self._piece_bytes

    def add(self, window: Box, prediction: np.ndarray) -> None:
        where = window.slices(self.region.start)
        product = torch.from_numpy(prediction) * self._weights  # nnU-Net: ``prediction *= gaussian``
        self._sums[(slice(None), *where)].add_(product)  # float32 into float16, rounded once
        self._weight[where].add_(self._half)
        rank = tuple(window.start[a] for a in self.order)
        for box in self.spill:
            part = window.intersect(box)
            if part.empty:
                continue
            piece = product[(slice(None), *part.slices(window.start))].numpy().copy()
            self.pieces.append((part, piece, rank))
            self._piece_bytes += piece.nbytes

    def clear(self, nodata: np.ndarray) -> None:
        super().clear(nodata)
        for i, (box, piece, rank) in enumerate(self.pieces):
            hole = nodata[box.slices(self.region.start)]
            if not hole.any():
                continue
            weight = self._weights[box.slices(window_start(rank, self.order))].numpy()
            piece = np.concatenate([piece, weight[None]])  # the weight kept, zero where nodata
            piece[:, hole] = 0.0
            self.pieces[i] = (box, piece, rank)

    def seam_pieces(self) -> list[Piece]:
        """What the seam merge needs of this block: each window's share, then the leading sums."""
        lead: list[Piece] = []
        for box in self.lead:
            sums, weight = self.view(box)
            lead.append((box, np.concatenate([sums, weight[None]]), (0,) * box.ndim))
        return self.pieces + lead


def window_start(rank: tuple[int, ...], order: tuple[int, ...]) -> tuple[int, ...]:
    """A window's start in scene axes from its rank (its start in the network's axis order)."""
    start = [0] * len(order)
    for r, a in zip(rank, order, strict=True):
        start[a] = r
    return tuple(start)


def replay(
    band: Box, channels: int, pieces: list[Piece], weights: np.ndarray, order: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """float16 sums and weight over ``band``: the leading sums, then each window's share added in
    nnU-Net's order (its weight from ``weights``, the importance map, unless the share carries it)."""
    sums = torch.zeros((channels, *band.shape), dtype=torch.float16)
    weight = torch.zeros(band.shape, dtype=torch.float16)
    half = torch.tensor(np.asarray(weights), dtype=torch.float16)  # exact: float16 values
    for box, piece, rank in sorted(pieces, key=lambda p: (p[1].dtype != np.float16, p[2])):
        overlap = box.intersect(band)
        if overlap.empty:
            continue
        part = torch.from_numpy(loaded(piece)[(slice(None), *overlap.slices(box.start))])
        where = overlap.slices(band.start)
        if piece.dtype == np.float16:  # a block's leading sums: nothing comes before them
            sums[(slice(None), *where)].copy_(part[:channels])
            weight[where].copy_(part[channels])
            continue
        sums[(slice(None), *where)].add_(part[:channels])
        if piece.shape[0] > channels:
            weight[where].add_(part[channels].to(torch.float16))
        else:
            weight[where].add_(half[overlap.slices(window_start(rank, order))])
    return sums.numpy(), weight.numpy()


def nnunet_finalise(sums: np.ndarray, weight: np.ndarray, folds: int = 1) -> np.ndarray:
    """float32 scores ``(K, *s)`` from float16 sums ``(folds * K, *s)``, as nnU-Net finishes them: each
    fold divided by the weight in float16, the folds added and divided by their count in float16.
    Pixels no window covered get NaN."""
    s, w = torch.from_numpy(sums), torch.from_numpy(weight)
    k = s.shape[0] // folds
    total = torch.div(s[:k], w)
    for f in range(1, folds):
        total += torch.div(s[f * k : (f + 1) * k], w)
    if folds > 1:
        total /= folds
    out = total.float().numpy()
    if w.numel() and float(w.min()) <= 0:
        out[:, weight <= 0] = np.nan
    return out


def finalise_into(sums: np.ndarray, weight: np.ndarray, out: np.ndarray) -> None:
    """Divide weighted sums ``(K, *s)`` by ``weight`` into ``out`` (may be ``sums`` itself).

    Pixels no window covered (all their windows were skipped as nodata) get NaN scores. torch
    divides on all intra-op threads.
    """
    w = torch.from_numpy(weight)
    torch.div(torch.from_numpy(sums), w, out=torch.from_numpy(out))  # x / 0 -> NaN or inf, fixed below
    if w.numel() and float(w.min()) <= 0:
        out[:, weight <= 0] = np.nan


def finalise(sums: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Blended float32 scores ``(K, *s)`` in a new array."""
    scores = np.empty(sums.shape, dtype=np.float32)
    finalise_into(sums, weight, scores)
    return scores

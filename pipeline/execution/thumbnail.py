"""The scene's summary canvas, filled by the block pass: a decimated image, its labels, class counts.

The quicklook and the report's class table used to come from a second pass over the input after the
blocks: a decimated read of the whole scene, which for a big GeoTIFF without overviews decompressed
every tile again (ten minutes at 32768²). Instead, every block adds what it already holds:

- ``compute``: the pixels of a fixed, global sample grid that fall in the block's read region
  (``thumbs/<block>.npz``, written before the block's own file, so a computed block has its thumb);
- ``merge``: the final labels at the sample points of its write region and the bincount of its whole
  write region (``tallies/<block>.npz``, written before the merged marker).

Blocks overlap in their read regions; overlapping samples are the same source pixels, so the canvas
does not depend on which block wrote last. Write regions partition the scene, so the counts add up
exactly. Both live in the work store, so a resumed run finds them; a store without them (an older
run's) gives ``None`` and the caller falls back to reading.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.box import Box

MAX_EDGE_2D = 1024  # the quicklook's longest side (pixels)
MAX_VOXELS_3D = 1 << 24  # a volume is kept whole up to this size, else decimated evenly per axis
CHANNELS = 3  # the quicklook shows the first three channels (or the first as grey): only those are kept


def sample_axes(spatial_shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Per axis, the sorted source indices of the canvas (nearest neighbour, pixel centres)."""
    shape = [int(n) for n in spatial_shape]
    if len(shape) == 2:
        scale = min(1.0, MAX_EDGE_2D / max(shape))
        out = [max(1, round(n * scale)) for n in shape]
    else:
        factor = max(1.0, (math.prod(shape) / MAX_VOXELS_3D) ** (1 / len(shape)))
        out = [max(1, min(n, math.ceil(n / factor))) for n in shape]
    return tuple(((np.arange(m) + 0.5) * n / m).astype(np.int64) for n, m in zip(shape, out, strict=True))


def _within(axes: tuple[np.ndarray, ...], box: Box) -> tuple[tuple[int, int], ...]:
    """Per axis, the range of canvas indices whose source index lies in ``box``."""
    return tuple(
        (int(np.searchsorted(a, lo, "left")), int(np.searchsorted(a, hi, "left")))
        for a, lo, hi in zip(axes, box.start, box.stop, strict=True)
    )


def _take(data: np.ndarray, axes: tuple[np.ndarray, ...], box: Box, ranges: Any) -> np.ndarray:
    """The samples of ``data`` (``(..., *box.shape)``, origin ``box.start``) at the canvas ``ranges``."""
    picks = [a[lo:hi] - s for a, (lo, hi), s in zip(axes, ranges, box.start, strict=True)]
    lead = data.ndim - len(axes)
    return data[(Ellipsis, *np.ix_(*picks))] if lead else data[np.ix_(*picks)]


def _save(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _name(index: tuple[int, ...]) -> str:
    return "_".join(map(str, index)) + ".npz"


def put_image_samples(
    root: str | Path, index: tuple[int, ...], region: Box, raw: np.ndarray, spatial: tuple[int, ...]
) -> None:
    """Store the canvas samples inside ``region`` of ``raw`` (``(C, *region.shape)``, the scene's own
    channels before any band selection)."""
    inside = region.intersect(Box.from_shape(spatial))  # a window may reach past a short scene
    axes = sample_axes(spatial)
    ranges = _within(axes, inside)
    image = _take(raw[(slice(0, CHANNELS), *inside.slices(region.start))], axes, inside, ranges)
    _save(Path(root) / "thumbs" / _name(index), ranges=np.array(ranges, np.int64), image=image)


def put_label_tally(root: str | Path, index: tuple[int, ...], write: Box, labels: np.ndarray,
                    spatial: tuple[int, ...]) -> None:  # fmt: skip
    """Store the final labels at the canvas samples of ``write`` and the bincount of all of them."""
    axes = sample_axes(spatial)
    ranges = _within(axes, write)
    import torch  # its bincount takes uint8 as it is; numpy's first widens every label to int64 (3x slower)

    counts = torch.bincount(torch.from_numpy(np.ascontiguousarray(labels)).view(-1), minlength=256)
    counts = counts.numpy().astype(np.int64)
    _save(
        Path(root) / "tallies" / _name(index),
        ranges=np.array(ranges, np.int64),
        labels=_take(labels, axes, write, ranges),
        counts=counts,
    )


@dataclass
class Canvas:
    """The decimated scene: ``image`` ``(C, *shape)`` in the source dtype, ``labels`` ``shape`` uint8,
    ``counts`` the pixels per label value (256), ``axes`` the source index of each canvas position."""

    image: np.ndarray
    labels: np.ndarray
    counts: np.ndarray
    axes: tuple[np.ndarray, ...]


def _fill(folder: Path, key: str, canvas: np.ndarray, spatial_dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Paste every stored piece of ``folder`` into ``canvas``; return the coverage mask and the sum of
    the pieces' counts (if they have any)."""
    covered = np.zeros(canvas.shape[canvas.ndim - spatial_dims :], bool)
    total = np.zeros(256, np.int64)
    for path in sorted(folder.glob("*.npz")):
        with np.load(path) as data:
            ranges, piece = data["ranges"], data[key]
            if "counts" in data.files:
                total += data["counts"]
        where = tuple(slice(int(lo), int(hi)) for lo, hi in ranges)
        canvas[(Ellipsis, *where)] = piece
        covered[where] = True
    return covered, total


def load_canvas(root: str | Path, spatial: tuple[int, ...], channels: int, dtype: Any) -> Canvas | None:
    """The canvas the blocks built, or None when a block's piece is missing (an older work store)."""
    root = Path(root)
    if not (root / "thumbs").is_dir() or not (root / "tallies").is_dir():
        return None
    axes = sample_axes(spatial)
    shape = tuple(len(a) for a in axes)
    image = np.zeros((min(channels, CHANNELS), *shape), dtype=dtype)
    labels = np.zeros(shape, np.uint8)
    seen_image, _ = _fill(root / "thumbs", "image", image, len(shape))
    seen_labels, counts = _fill(root / "tallies", "labels", labels, len(shape))
    if not (seen_image.all() and seen_labels.all()):
        return None
    return Canvas(image, labels, counts, axes)


def sample_labels(labels: Any, axes: tuple[np.ndarray, ...], rows: int = 1024) -> np.ndarray:
    """A label array (numpy, zarr, a native view) at the canvas's grid, rescaled to its own shape, read
    in slabs along the first axis (for labels changed after the merge, e.g. small objects removed)."""
    shape = tuple(int(n) for n in labels.shape)
    own = tuple(
        ((np.arange(len(a)) + 0.5) * n / len(a)).astype(np.int64) for a, n in zip(axes, shape, strict=True)
    )
    parts = []
    for r0 in range(0, shape[0], rows):
        wanted = own[0][(own[0] >= r0) & (own[0] < r0 + rows)]
        if wanted.size:
            slab = np.asarray(labels[r0 : int(wanted[-1]) + 1])
            parts.append(slab[np.ix_(wanted - r0, *own[1:])])
    return np.concatenate(parts, axis=0)


@dataclass
class CanvasScene:
    """The canvas image as a small in-memory Scene, so the quicklook renders it as it renders a file
    (its spacing stretched by the decimation, so a volume keeps its physical aspect)."""

    uri: str
    image: np.ndarray
    meta: Any

    @classmethod
    def of(cls, scene: Any, canvas: Canvas) -> CanvasScene:
        meta = scene.meta
        spacing = getattr(meta, "spacing", None)
        if spacing is not None and dataclasses.is_dataclass(meta):
            full = tuple(int(n) for n in scene.shape[1:])
            factors = [n / len(a) for n, a in zip(full, canvas.axes, strict=True)]
            meta = dataclasses.replace(
                meta, spacing=tuple(s * f for s, f in zip(spacing, factors, strict=True))
            )
        return cls(scene.uri, canvas.image, meta)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.image.dtype

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])

    def read(self, box: Box, fill: float = 0.0) -> np.ndarray:
        inside = box.intersect(Box.from_shape(self.spatial_shape))
        out = np.full((self.image.shape[0], *box.shape), fill, dtype=self.image.dtype)
        if not inside.empty:
            out[(slice(None), *inside.slices(box.start))] = self.image[(slice(None), *inside.slices())]
        return out

    def read_nodata(self, box: Box) -> np.ndarray | None:
        return None

    def close(self) -> None:
        pass

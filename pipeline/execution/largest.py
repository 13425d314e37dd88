"""MONAI's ``KeepLargestConnectedComponent`` on a label array, block by block, with MONAI's own result.

A MONAI bundle's ``KeepLargestConnectedComponentd`` keeps, per applied label (``independent``) or
over their union, the ``num_components`` largest connected components (``connectivity`` hops, full
by default) and sets the rest to 0. MONAI does it with ``skimage.measure.label`` on the whole array,
numbering components in raster order of their first pixel, and keeps
``argsort(bincount(labels))[::-1][:num_components]``. Ties between equal sizes go wherever that
sort puts them, so to keep exactly MONAI's components we rebuild that very ``bincount`` array (the
same sizes in the same order) and run the same expression on it.

Block-wise, in the way of :mod:`pipeline.execution.components`, memory stays a block plus the blocks'
faces and a table per component:

1. ``survey`` labels each block (``scipy.ndimage.label``, the same numbering as skimage's) and returns
   its components' sizes, groups and first pixels, and its faces (component ids one pixel deep);
2. ``resolve`` joins components across block borders: for every border, the two global planes either
   side of it are compared at each offset within ``connectivity`` (diagonal neighbours across edges
   and corners included), and a connected-components pass over those pairs (union-find) merges them;
   then it decides, per group, which components MONAI keeps;
3. ``apply`` labels each block again and writes it with the removed components set to 0.

The per-block steps are plain functions of (array, slices, ...), so a ``mapper`` may run them where
the blocks are; by default they run here, one after the other.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.execution.component_pixels import unique_pairs

Index = tuple[int, ...]
Mapper = Callable[[Callable[..., Any], Sequence[tuple[Any, ...]]], list[Any]]
UNION = 0  # the one group of a rule that is not independent


@dataclass(frozen=True)
class Rule:
    """The transform's arguments, as MONAI defines them (``connectivity=None``: full, ``ndim``)."""

    applied_labels: tuple[int, ...] | None = None  # None: every label but 0 (and tilewise's nodata)
    independent: bool = True
    connectivity: int | None = None
    num_components: int = 1
    nodata: int = 255

    @classmethod
    def of(cls, post: Any, nodata: int) -> Rule:
        """From a bundle's ``postprocess`` (:class:`models.bundle.schema.Postprocess`)."""
        applied = post.applied_labels
        return cls(
            None if applied is None else tuple(int(v) for v in applied),
            bool(post.independent),
            post.connectivity,
            int(post.num_components),
            nodata,
        )

    def structure(self, ndim: int) -> np.ndarray:
        from scipy import ndimage

        return ndimage.generate_binary_structure(ndim, self.hops(ndim))

    def hops(self, ndim: int) -> int:
        return ndim if self.connectivity is None else int(self.connectivity)


@dataclass
class Survey:
    """What pass 1 returns for a block: per local id (0 unused) its size, group and first pixel, and
    the block's faces as local ids, keyed by (axis, 0 | -1)."""

    count: int
    sizes: np.ndarray
    groups: np.ndarray
    first: np.ndarray
    faces: dict[tuple[int, int], np.ndarray]


def label_block(block: np.ndarray, rule: Rule) -> tuple[np.ndarray, np.ndarray]:
    """Local component ids (0: not analysed) and the group of each id (index 0 unused): the label
    value when independent, else ``UNION``."""
    from scipy import ndimage

    structure = rule.structure(block.ndim)
    ids = np.zeros(block.shape, np.int64)
    groups = [-1]
    if not rule.independent:
        if rule.applied_labels is None:
            mask = (block != 0) & (block != rule.nodata)
        else:
            mask = np.isin(block, rule.applied_labels)
        comp, n = ndimage.label(mask, structure=structure)
        return comp.astype(np.int64), np.array(groups + [UNION] * n, np.int64)
    present = [int(v) for v in np.unique(block)]
    if rule.applied_labels is None:
        values = [v for v in present if v not in (0, rule.nodata)]
    else:  # label 0 is a no-op in MONAI: its removed voxels are set to 0 again
        values = [v for v in present if v in rule.applied_labels and v != 0]
    for value in values:
        comp, n = ndimage.label(block == value, structure=structure)
        hit = comp > 0
        ids[hit] = comp[hit] + (len(groups) - 1)
        groups.extend([value] * n)
    return ids, np.array(groups, np.int64)


def survey(labels: Any, sl: tuple[slice, ...], shape: tuple[int, ...], rule: Rule) -> Survey:
    """Pass 1 on one block (runs where the block is)."""
    block = np.asarray(labels[sl])
    ids, groups = label_block(block, rule)
    count = len(groups) - 1
    sizes = np.bincount(ids.ravel(), minlength=count + 1).astype(np.int64)
    first = np.full(count + 1, np.iinfo(np.int64).max, np.int64)
    values, where = np.unique(ids.ravel(), return_index=True)
    coords = np.unravel_index(where, ids.shape)
    origin = tuple(s.start for s in sl)
    first[values] = np.ravel_multi_index(tuple(c + o for c, o in zip(coords, origin, strict=True)), shape)
    faces = {}
    for axis in range(block.ndim):
        for side in (0, -1):
            take = [slice(None)] * block.ndim
            take[axis] = side
            faces[(axis, side)] = ids[tuple(take)].copy()
    return Survey(count, sizes, groups, first, faces)


def apply(labels: Any, out: Any, sl: tuple[slice, ...], rule: Rule, removed: np.ndarray) -> int:
    """Pass 3 on one block: write it to ``out`` with its removed components (``removed`` per local id)
    set to 0; returns the number of voxels changed."""
    block = np.asarray(labels[sl])
    if not removed.any():
        out[sl] = block
        return 0
    ids, _ = label_block(block, rule)
    gone = removed[ids]
    result = block.copy()
    result[gone] = 0
    out[sl] = result
    return int(np.count_nonzero(gone & (block != 0)))


def chunk_grid(shape: tuple[int, ...], chunks: tuple[int, ...]) -> list[tuple[Index, tuple[slice, ...]]]:
    ranges = [range(0, n, c) for n, c in zip(shape, chunks, strict=True)]
    return [
        (
            tuple(s // c for s, c in zip(starts, chunks, strict=True)),
            tuple(slice(s, min(s + c, n)) for s, c, n in zip(starts, chunks, shape, strict=True)),
        )
        for starts in itertools.product(*ranges)
    ]


def serial(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[Any]:
    return [fn(*args) for args in calls]


def keep_largest(labels: Any, out: Any, rule: Rule, *, mapper: Mapper | None = None) -> int:
    """Write ``labels`` (chunked, e.g. zarr; each chunk one block) to ``out`` (same shape and chunks)
    as MONAI's ``KeepLargestConnectedComponent`` leaves it; returns the number of components removed."""
    mapper = mapper or serial
    shape = tuple(int(n) for n in labels.shape)
    chunks = tuple(int(c) for c in (getattr(labels, "chunks", None) or shape))
    grid = chunk_grid(shape, chunks)
    found = mapper(survey, [(labels, sl, shape, rule) for _, sl in grid])
    surveys = dict(zip((i for i, _ in grid), found, strict=True))
    removed, count = resolve(surveys, shape, chunks, rule)
    mapper(apply, [(labels, out, sl, rule, removed[i]) for i, sl in grid])
    return count


def resolve(
    surveys: dict[Index, Survey], shape: tuple[int, ...], chunks: tuple[int, ...], rule: Rule
) -> tuple[dict[Index, np.ndarray], int]:
    """Pass 2, on the small tables: join components across borders and decide, per group, which ones
    MONAI keeps. Returns, per block, whether each local id is removed, and the count removed."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    base, total = {}, 0
    for index, s in surveys.items():
        base[index], total = total, total + s.count + 1
    size, group, first = (np.zeros(total, np.int64) for _ in range(3))
    on_face = np.zeros(total, bool)
    for index, s in surveys.items():
        span = slice(base[index], base[index] + s.count + 1)
        size[span], group[span], first[span] = s.sizes, s.groups, s.first
        for face in s.faces.values():
            on_face[face[face > 0] + base[index]] = True
    size[list(base.values())], group[list(base.values())] = 0, -1  # the unused id 0 of each block
    rows, cols = _seam_pairs(surveys, base, shape, chunks, group, rule.hops(len(shape)))
    keys = np.flatnonzero(on_face)
    n = len(keys)
    _, root = connected_components(
        coo_matrix((np.ones(len(rows)), (np.searchsorted(keys, rows), np.searchsorted(keys, cols))), (n, n)),
        directed=False,
    )
    roots = int(root.max()) + 1 if n else 0
    r_size = np.bincount(root, weights=size[keys], minlength=roots).astype(np.int64)
    r_first = np.full(roots, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(r_first, root, first[keys])
    r_group = np.zeros(roots, np.int64)
    r_group[root] = group[keys]
    inner = np.flatnonzero(~on_face & (group >= 0))
    # every component of the scene: those inside one block, then those joined across borders
    c_size = np.concatenate([size[inner], r_size])
    c_group = np.concatenate([group[inner], r_group])
    c_first = np.concatenate([first[inner], r_first])
    c_removed = np.zeros(len(c_size), bool)
    for g in np.unique(c_group):
        members = np.flatnonzero(c_group == g)
        if len(members) <= rule.num_components:
            continue
        members = members[np.argsort(c_first[members])]  # skimage's numbering: raster order
        counts = np.concatenate([[0], c_size[members]])  # MONAI's bincount, background emptied
        kept = np.argsort(counts)[::-1][: rule.num_components]  # MONAI's own expression
        gone = np.ones(len(counts), bool)
        gone[kept] = False
        c_removed[members[gone[1:]]] = True
    removed = np.zeros(total, bool)
    removed[inner] = c_removed[: len(inner)]
    removed[keys] = c_removed[len(inner) :][root]
    per_block = {i: removed[base[i] : base[i] + s.count + 1] for i, s in surveys.items()}
    return per_block, int(c_removed.sum())


def _seam_pairs(
    surveys: dict[Index, Survey],
    base: dict[Index, int],
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    group: np.ndarray,
    hops: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Global ids of touching components in different blocks, of one group: for each border, the
    planes either side (the whole cross-section, one border at a time) at every offset that is a
    neighbour (a step across the border plus up to ``hops - 1`` steps along it)."""
    ndim = len(shape)
    rows: list[np.ndarray] = [np.zeros(0, np.int64)]
    cols: list[np.ndarray] = [np.zeros(0, np.int64)]
    offsets = [o for o in itertools.product((-1, 0, 1), repeat=ndim - 1) if np.count_nonzero(o) <= hops - 1]
    for axis in range(ndim):
        for row in range(1, -(-shape[axis] // chunks[axis])):
            lower = _plane(surveys, base, shape, chunks, axis, row - 1, -1)
            upper = _plane(surveys, base, shape, chunks, axis, row, 0)
            for off in offsets:
                a = lower[
                    tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(off, lower.shape, strict=True))
                ]
                b = upper[
                    tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(off, upper.shape, strict=True))
                ]
                hit = (a > 0) & (b > 0)
                hit[hit] = group[a[hit]] == group[b[hit]]
                pair_a, pair_b = unique_pairs(a[hit], b[hit])  # a seam's pixels repeat a few pairs
                rows.append(pair_a)
                cols.append(pair_b)
    return np.concatenate(rows), np.concatenate(cols)


def _plane(
    surveys: dict[Index, Survey],
    base: dict[Index, int],
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    axis: int,
    row: int,
    side: int,
) -> np.ndarray:
    """The global ids on one side of a border: the faces of the blocks in chunk row ``row``."""
    plane = np.zeros(shape[:axis] + shape[axis + 1 :], np.int64)
    for index, s in surveys.items():
        if index[axis] != row:
            continue
        face = s.faces[(axis, side)]
        where = tuple(
            slice(i * c, i * c + n)
            for i, c, n in zip(
                index[:axis] + index[axis + 1 :], chunks[:axis] + chunks[axis + 1 :], face.shape, strict=True
            )
        )
        plane[where] = np.where(face > 0, face + base[index], 0)
    return plane

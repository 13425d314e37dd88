"""Connected-component clean-up (``--min-object-size``, ``--keep-largest``) block by block, exact.

The rule, as the whole-array reference ``pipeline.job.outputs.remove_small_objects`` applies it: a
component is a 4-connected (6 in 3-D) region of one class (nodata excluded). A component is removed
when it has fewer than ``min_size`` pixels, or, with ``keep_largest``, when it is not its class's
largest (ties: the one whose first pixel in raster order comes first). A removed component takes the
most common class among the pixels that touch it (counted once each; nodata never; ties to the lower
class id), taken from the labels as they were; with no such neighbour it stays.

Block-wise, over the label array's chunks (each chunk one block), memory stays a block plus the
chunks' faces:

1. label each block's components (``scipy.ndimage.label`` per class) and keep its faces (labels and
   component ids one pixel deep); components on a face are joined across block borders with a
   connected-components pass over the face pairs (union-find over the seams);
2. per block again: decide every component (sizes of joined components are summed over blocks), count
   the neighbour classes of removed components, write the block with its own components settled;
3. rewrite the blocks holding removed components that cross a border, once their counts are complete.

The result is identical to the reference for any chunking (property-tested).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Index = tuple[int, ...]


@dataclass
class _Block:
    """What pass 1 keeps of a block: its faces and its components that touch one."""

    slices: tuple[slice, ...]
    count: int  # local components (ids 1..count)
    faces: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    face_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sorted local ids


def _label(block: np.ndarray, nodata: int) -> tuple[np.ndarray, np.ndarray]:
    """Local component ids (0: nodata) and the class of each id (index 0 unused)."""
    from scipy import ndimage

    ids = np.zeros(block.shape, np.int32)
    classes = [0]
    for value in np.unique(block):
        if value == nodata:
            continue
        comp, n = ndimage.label(block == value)
        ids[comp > 0] = comp[comp > 0] + (len(classes) - 1)
        classes.extend([int(value)] * n)
    return ids, np.array(classes, np.int64)


def _first_pixels(ids: np.ndarray, count: int, origin: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Global raster index of each local component's first pixel (for the keep-largest tie-break)."""
    first = np.full(count + 1, np.iinfo(np.int64).max, np.int64)
    values, where = np.unique(ids.ravel(), return_index=True)
    coords = np.unravel_index(where, ids.shape)
    first[values] = np.ravel_multi_index(tuple(c + o for c, o in zip(coords, origin, strict=True)), shape)
    return first


def _best_per_class(
    best: dict[int, tuple[int, int, int]],
    cls: np.ndarray,
    size: np.ndarray,
    first: np.ndarray,
    key: np.ndarray,
) -> None:
    """Fold candidates into ``best``: per class the largest component, then the earliest first pixel."""
    if not len(cls):
        return
    order = np.lexsort((first, -size, cls))
    cls, size, first, key = cls[order], size[order], first[order], key[order]
    lead = np.ones(len(cls), bool)
    lead[1:] = cls[1:] != cls[:-1]
    for k, n, f, g in zip(cls[lead], size[lead], first[lead], key[lead], strict=True):
        cand = (int(n), -int(f), int(g))
        if int(k) not in best or cand[:2] > best[int(k)][:2]:
            best[int(k)] = cand


def _chunk_grid(labels: Any) -> list[tuple[Index, tuple[slice, ...]]]:
    shape, chunks = labels.shape, getattr(labels, "chunks", None) or labels.shape
    ranges = [range(0, n, c) for n, c in zip(shape, chunks, strict=True)]
    out = []
    for starts in itertools.product(*ranges):
        index = tuple(s // c for s, c in zip(starts, chunks, strict=True))
        out.append(
            (index, tuple(slice(s, min(s + c, n)) for s, c, n in zip(starts, chunks, shape, strict=True)))
        )
    return out


def clean_components(labels: Any, out: Any, *, min_size: int, keep_largest: bool, nodata: int) -> int:
    """Write ``labels`` (chunked, e.g. zarr) to ``out`` (same shape and chunks) with the components the
    rule removes relabelled; returns the number of removed components."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    shape = tuple(int(n) for n in labels.shape)
    grid = _chunk_grid(labels)
    blocks: dict[Index, _Block] = {}
    base: dict[Index, int] = {}
    total = 0
    sizes_f, class_f, first_f, key_f = [], [], [], []  # face components, by global key
    best: dict[int, tuple[int, int, int]] = {}  # class -> (size, -first, global key) of interior comps
    for index, sl in grid:  # pass 1
        block = np.asarray(labels[sl])
        ids, classes = _label(block, nodata)
        count = len(classes) - 1
        origin = tuple(s.start for s in sl)
        sizes = np.bincount(ids.ravel(), minlength=count + 1)
        first = _first_pixels(ids, count, origin, shape) if keep_largest else np.zeros(count + 1, np.int64)
        info = _Block(sl, count)
        for axis in range(block.ndim):
            for side in (0, -1):
                take = [slice(None)] * block.ndim
                take[axis] = side
                info.faces[(axis, side)] = (block[tuple(take)].copy(), ids[tuple(take)].copy())
        on_face = np.unique(np.concatenate([f[1].ravel() for f in info.faces.values()]))
        info.face_ids = on_face[on_face > 0]
        base[index], blocks[index] = total, info
        sizes_f.append(sizes[info.face_ids])
        class_f.append(classes[info.face_ids])
        first_f.append(first[info.face_ids])
        key_f.append(info.face_ids.astype(np.int64) + total)
        if keep_largest:
            inner = np.setdiff1d(np.arange(1, count + 1), info.face_ids)
            _best_per_class(best, classes[inner], sizes[inner], first[inner], inner + total)
        total += count + 1
    keys = np.concatenate(key_f) if key_f else np.zeros(0, np.int64)
    order = np.argsort(keys)
    keys = keys[order]
    f_size, f_class, f_first = (np.concatenate(a)[order] for a in (sizes_f, class_f, first_f))
    # union over the seams: a face pixel and the pixel across the border, same class
    rows, cols = [], []
    for index, info in blocks.items():
        for axis in range(len(shape)):
            upper = tuple(i + (a == axis) for a, i in enumerate(index))
            if upper not in blocks:
                continue
            lab_a, id_a = info.faces[(axis, -1)]
            lab_b, id_b = blocks[upper].faces[(axis, 0)]
            same = (lab_a == lab_b) & (lab_a != nodata)
            rows.append(np.searchsorted(keys, id_a[same] + base[index]))
            cols.append(np.searchsorted(keys, id_b[same] + base[upper]))
    n = len(keys)
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    _, root = connected_components(coo_matrix((np.ones(len(r)), (r, c)), shape=(n, n)), directed=False)
    roots = int(root.max()) + 1 if n else 0
    r_size = np.bincount(root, weights=f_size, minlength=roots).astype(np.int64)
    r_first = np.full(roots, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(r_first, root, f_first)
    r_class = np.zeros(roots, np.int64)
    r_class[root] = f_class
    r_ids = -(np.arange(roots) + 1)  # border roots are -1, -2, ...
    r_removed = r_size < min_size
    if keep_largest:
        _best_per_class(best, r_class, r_size, r_first, r_ids)
        winners = np.array([best[int(k)][2] for k in r_class], np.int64)
        r_removed |= winners != r_ids

    def ident(index: Index, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global identity (border roots negative, others their key; 0 nodata) and removal (of border
        roots only) of local ids."""
        key = local.astype(np.int64) + base[index]
        out_id = np.where(local > 0, key, 0)
        removed = np.zeros(local.shape, bool)
        if n:
            pos = np.minimum(np.searchsorted(keys, key), n - 1)
            border = (local > 0) & (keys[pos] == key)
            out_id = np.where(border, -(root[pos] + 1), out_id)
            removed = border & r_removed[root[pos]]
        return out_id, removed

    hist: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(256, np.int64))
    revisit: set[Index] = set()
    removed_count = int(r_removed.sum())
    for index, sl in grid:  # pass 2
        block = np.asarray(labels[sl])
        info = blocks[index]
        ids, classes = _label(block, nodata)
        idents, removed = ident(index, ids)
        inner = np.ones(info.count + 1, bool)
        inner[0] = False
        inner[info.face_ids] = False
        gone = inner & (np.bincount(ids.ravel(), minlength=info.count + 1) < min_size)
        if keep_largest:
            keys_here = np.arange(info.count + 1) + base[index]
            gone |= inner & (np.array([best.get(int(k), (0, 0, 0))[2] for k in classes]) != keys_here)
        removed_count += int(gone.sum())
        removed |= gone[ids]
        if ident(index, info.face_ids)[1].any():
            revisit.add(index)
        result = block.copy()
        if removed.any() or any(ident(o, f[1])[1].any() for o, f in _neighbour_faces(index, blocks)):
            pad_id, pad_rm = _padded(index, idents, removed, blocks, ident)
            comp, cls, counts = _ring_counts(block, idents, pad_id, pad_rm, nodata)
            for i, k, m in zip(comp[comp < 0], cls[comp < 0], counts[comp < 0], strict=True):
                hist[int(i)][k] += m
            new = np.full(info.count + 1, -1, np.int64)
            for i, k in _decide(comp[comp > 0], cls[comp > 0], counts[comp > 0]).items():
                new[i - base[index]] = k
            mapped = new[ids]
            result[mapped >= 0] = mapped[mapped >= 0]
        out[sl] = result
    fixes = {i: int(np.argmax(h)) for i, h in hist.items() if h.any()}
    if fixes:
        fix_ids = np.array(sorted(fixes), np.int64)
        fix_cls = np.array([fixes[i] for i in fix_ids], np.uint8)
        for index, sl in grid:  # pass 3
            if index not in revisit:
                continue
            ids, _ = _label(np.asarray(labels[sl]), nodata)
            idents, _ = ident(index, ids)
            result = np.asarray(out[sl]).copy()
            hit = np.isin(idents, fix_ids)
            result[hit] = fix_cls[np.searchsorted(fix_ids, idents[hit])]
            out[sl] = result
    return removed_count


def _neighbour_faces(index: Index, blocks: dict[Index, _Block]) -> list[tuple[Index, Any]]:
    """The faces of the neighbouring blocks that touch ``index``, with the neighbour's index."""
    out = []
    for axis in range(len(index)):
        for step, side in ((-1, -1), (1, 0)):
            other = tuple(i + step * (a == axis) for a, i in enumerate(index))
            if other in blocks:
                out.append((other, blocks[other].faces[(axis, side)]))
    return out


Ident = Callable[[Index, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _padded(
    index: Index, idents: np.ndarray, removed: np.ndarray, blocks: dict[Index, _Block], ident: Ident
) -> tuple[np.ndarray, np.ndarray]:
    """``idents``/``removed`` with a one-pixel halo from the neighbouring blocks' faces (0 / False
    outside the scene)."""
    pad_id, pad_rm = np.pad(idents, 1), np.pad(removed, 1)
    for axis in range(idents.ndim):
        for step, side in ((-1, -1), (1, 0)):
            other = tuple(i + step * (a == axis) for a, i in enumerate(index))
            if other not in blocks:
                continue
            where = [slice(1, -1)] * idents.ndim
            where[axis] = 0 if step < 0 else -1
            pad_id[tuple(where)], pad_rm[tuple(where)] = ident(other, blocks[other].faces[(axis, side)][1])
    return pad_id, pad_rm


def _ring_counts(
    block: np.ndarray, idents: np.ndarray, pad_id: np.ndarray, pad_rm: np.ndarray, nodata: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(removed component, class of a pixel touching it), each touching pixel once per component."""
    ndim = block.ndim
    cands = []
    for axis in range(ndim):
        for step in (-1, 1):
            sl = [slice(1, -1)] * ndim
            sl[axis] = slice(1 + step, pad_id.shape[axis] - 1 + step)
            nid, nrm = pad_id[tuple(sl)], pad_rm[tuple(sl)]
            cands.append(np.where(nrm & (nid != idents), nid, 0))
    stack = np.stack(cands).reshape(2 * ndim, -1)
    values = block.ravel()
    keep = stack.any(axis=0) & (values != nodata)
    stack, values = np.sort(stack[:, keep], axis=0), values[keep]
    fresh = np.ones(stack.shape, bool)
    fresh[1:] = stack[1:] != stack[:-1]
    fresh &= stack != 0
    comp = stack[fresh]
    cls = np.broadcast_to(values, stack.shape)[fresh]
    if not comp.size:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    uniq, counts = np.unique(np.stack([comp, cls.astype(np.int64)]), axis=1, return_counts=True)
    return uniq[0], uniq[1], counts


def _decide(ids: np.ndarray, cls: np.ndarray, counts: np.ndarray) -> dict[int, int]:
    """Per component, the most frequent class (ties: the lowest)."""
    order = np.lexsort((cls, -counts, ids))
    ids, cls = ids[order], cls[order]
    first = np.ones(len(ids), bool)
    first[1:] = ids[1:] != ids[:-1]
    return {int(i): int(k) for i, k in zip(ids[first], cls[first], strict=True)}

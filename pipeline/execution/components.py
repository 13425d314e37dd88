"""Connected-component clean-up (``--min-object-size``, ``--keep-largest``) block by block, exact.

The rule, as the whole-array reference ``pipeline.job.outputs.remove_small_objects`` applies it: a
component is a 4-connected (6 in 3-D) region of one class (nodata excluded). A component is removed
when it has fewer than ``min_size`` pixels, or, with ``keep_largest``, when it is not its class's
largest (ties: the one whose first pixel in raster order comes first). A removed component takes the
most common class among the pixels that touch it (counted once each; nodata never; ties to the lower
class id), taken from the labels as they were; with no such neighbour it stays.

Block-wise, over the label array's chunks (each chunk one block). The per-block work runs where the
blocks are: ``clean_components`` hands it to a ``Mapper`` (threads here, or the Dask workers through
the executor), and only small tables travel back and forth:

1. ``summarise`` (per block): label the block's components (``scipy.ndimage.label`` per class); send
   back its faces (labels and component ids, one pixel deep), its face components' sizes, classes and
   first pixels, and per class its largest inner component;
2. the caller joins face components across block borders with a connected-components pass over each
   seam's distinct pairs (union-find over the seams), decides every joined component, and gives each
   block its own table: its face components' fate, and its neighbours' faces (their local ids) with
   theirs, which the block maps to global identities itself;
3. ``settle`` (per block): label again, decide the block's own components, write the block, and send
   back the neighbour-class counts of removed components that cross a border;
4. ``fix`` (per block holding such a component, once its counts are complete): rewrite it.

Memory: one block per thread or worker, and the tables in the caller: each face's ids once (8 bytes a
seam pixel) and the face components.
The result is identical to the reference for any chunking and any mapper (property-tested).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.engine.allocator import release_free_memory
from pipeline.execution.component_pixels import (
    PASS_BYTES_PER_PIXEL,
    apply_classes,
    best_per_class,
    decide,
    global_first,
    label_block,
    ring_counts,
    slab_rows,
    unique_pairs,
)

Index = tuple[int, ...]
Face = tuple[int, int]  # (axis, side): side 0 the low face, -1 the high one
# (function, its calls' arguments) -> its results, in order; where the calls run is the mapper's business
Mapper = Callable[[Callable[..., Any], Sequence[tuple[Any, ...]]], list[Any]]


def thread_map(threads: int | None = None) -> Mapper:
    """A mapper over ``threads`` threads of this process, one block each in memory; one by default.

    A second thread made the clean-up 1.7x faster but cost a second pass's buffers (and an arena):
    at 16384² one thread peaked at 707-710 MB in 51-54 s, two at 747-787 MB in 31 s, against 705 MB for
    the run without clean-up; at 32768² two threads measured 1.09-1.12x the run without. The clean-up
    keeps the block pass's memory; speed comes from Dask workers, each a process of its own blocks.
    """
    count = threads or 1

    def run(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        if count == 1 or len(calls) < 2:
            return [fn(*args) for args in calls]
        with ThreadPoolExecutor(count, thread_name_prefix="tilewise-components") as pool:
            return list(pool.map(lambda args: fn(*args), calls))

    return run


@dataclass
class Summary:
    """What ``summarise`` sends back of a block: faces, face components, inner winners."""

    count: int  # local components (ids 1..count)
    faces: dict[Face, tuple[np.ndarray, np.ndarray]]  # labels and local ids, one pixel deep
    # per component on a face, in the narrowest dtypes that hold them: the caller keeps every block's
    face_ids: np.ndarray  # sorted local ids (int32)
    face_size: np.ndarray  # pixels in this block (int32)
    face_class: np.ndarray  # the label's dtype
    face_first: np.ndarray  # global raster index of the first pixel (keep-largest only, else empty)
    best: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # class -> (size, -first, local)


@dataclass
class Table:
    """What ``settle`` and ``fix`` need of the whole scene for one block: small, sent with the call."""

    base: int  # the block's local ids + base = global keys of its inner components
    own_ids: np.ndarray  # sorted local ids on a face
    own_root: np.ndarray  # their joined component: -(root + 1)
    own_removed: np.ndarray
    # per neighbour: (axis, step, its own table without halo or best, its facing face's local ids). The
    # block maps those to global identities itself: the caller then holds each face once, shared by
    # the two tables that need it, rather than a second, mapped copy per block (~10 bytes per seam pixel)
    halo: list[tuple[int, int, Table, np.ndarray]]
    best: dict[int, int]  # class -> global key of its largest component (keep-largest)
    # the dtype of identities: int32 while the scene's component keys fit, which halves the largest
    # array a pass holds (its padded identities)
    ids_dtype: type = np.int32

    def bare(self) -> Table:
        """This block's identities alone (the arrays shared, not copied): what a neighbour needs."""
        return Table(self.base, self.own_ids, self.own_root, self.own_removed, [], {}, self.ids_dtype)

    def luts(self, top: int) -> tuple[np.ndarray, np.ndarray]:
        """Per local id up to ``top``: its global identity (border roots negative, inner components
        their key, 0 nodata) and its removal (known here for border roots only)."""
        top = max(top, int(self.own_ids.max(initial=0)))
        lut = np.arange(top + 1, dtype=np.int64) + self.base
        lut[0] = 0
        lut[self.own_ids] = self.own_root
        gone = np.zeros(top + 1, bool)
        gone[self.own_ids] = self.own_removed
        return lut, gone

    def ident(self, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``luts`` applied to an array of local ids."""
        lut, gone = self.luts(int(local.max(initial=0)))
        return lut[local], gone[local]

    def fixed(self, fixes: tuple[np.ndarray, np.ndarray], count: int) -> np.ndarray:
        """Per local id, the class a fixed border component takes (-1: unchanged)."""
        fix_ids, fix_cls = fixes
        out = np.full(count + 1, -1, np.int16)
        if len(fix_ids) and len(self.own_ids):
            pos = np.minimum(np.searchsorted(fix_ids, self.own_root), len(fix_ids) - 1)
            hit = fix_ids[pos] == self.own_root
            out[self.own_ids[hit]] = fix_cls[pos[hit]]
        return out


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


def _let_go(sl: tuple[slice, ...]) -> None:
    """Count a finished pass's block buffers toward the allocator's next trim.

    After the block pass the engine's allocator keeps up to 256 MB of freed heap for the next block
    (``pipeline.engine.allocator``). The passes' buffers (int32 and int64 ids, not float sums) did not
    reuse it, and each thread's arena kept its own (two threads then): the clean-up raised a 8192² run's peak
    from ~705 to 815 MB, and a 32768² run's from 714 to 848 MB. Trimmed as blocks pass, as the block
    pass does, the 8192² clean-up peaked within 35 MB of the run without it.
    """
    release_free_memory(PASS_BYTES_PER_PIXEL * math.prod(s.stop - s.start for s in sl))


def summarise(
    labels: Any, sl: tuple[slice, ...], shape: tuple[int, ...], keep_largest: bool, nodata: int
) -> Summary:
    """Pass 1 on one block (runs where the blocks are)."""
    block = np.asarray(labels[sl])
    ids, classes, local_first = label_block(block, nodata, first=keep_largest)
    count = len(classes) - 1
    sizes = np.bincount(ids.ravel(), minlength=count + 1)
    origin = tuple(s.start for s in sl)
    first = global_first(local_first, block.shape, origin, shape) if keep_largest else None
    faces: dict[Face, tuple[np.ndarray, np.ndarray]] = {}
    for axis in range(block.ndim):
        for side in (0, -1):
            take = [slice(None)] * block.ndim
            take[axis] = side
            faces[(axis, side)] = (block[tuple(take)].copy(), ids[tuple(take)].copy())
    on_face = np.unique(np.concatenate([f[1].ravel() for f in faces.values()]))
    face_ids = on_face[on_face > 0].astype(np.int32)
    best: dict[int, tuple[int, int, int]] = {}
    if first is not None:
        inner = np.setdiff1d(np.arange(1, count + 1), face_ids)
        best_per_class(best, classes[inner], sizes[inner], first[inner], inner)
    face_class = classes[face_ids].astype(block.dtype)
    del block, ids
    _let_go(sl)
    face_first = first[face_ids] if first is not None else np.zeros(0, np.int64)
    return Summary(count, faces, face_ids, sizes[face_ids].astype(np.int32), face_class, face_first, best)


def settle(
    labels: Any, out: Any, sl: tuple[slice, ...], table: Table, min_size: int, keep_largest: bool, nodata: int
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Pass 2 on one block: write it with its own components settled. Returns the number of inner
    components removed and the (component, neighbour class, count) rows of removed border components."""
    block = np.asarray(labels[sl])
    ids, classes, _ = label_block(block, nodata)
    count = len(classes) - 1
    inner = np.ones(count + 1, bool)
    inner[0] = False
    inner[table.own_ids] = False
    gone = inner & (np.bincount(ids.ravel(), minlength=count + 1) < min_size)
    if keep_largest:
        keys_here = np.arange(count + 1) + table.base
        gone |= inner & (np.array([table.best.get(int(k), -1) for k in classes]) != keys_here)
    pad_id, pad_rm = _padded(table, ids, gone, table.halo)
    result = block.copy()
    empty = np.zeros(0, np.int64)
    rows = (empty, empty, empty)
    if pad_rm.any():
        comp, cls, counts = ring_counts(block, pad_id, pad_rm, nodata)
        border = comp < 0
        rows = (comp[border], cls[border], counts[border])
        new = np.full(count + 1, -1, np.int16)
        for i, k in decide(comp[comp > 0], cls[comp > 0], counts[comp > 0]).items():
            new[i - table.base] = k
        apply_classes(result, new, ids)
    out[sl] = result
    del block, ids, pad_id, pad_rm, result
    _let_go(sl)
    return int(gone.sum()), *rows


def fix(
    labels: Any,
    out: Any,
    sl: tuple[slice, ...],
    table: Table,
    fixes: tuple[np.ndarray, np.ndarray],
    nodata: int,
) -> None:
    """Pass 3 on one block: give its removed border components their class, now that every block
    they touch has counted their neighbours."""
    ids, classes, _ = label_block(np.asarray(labels[sl]), nodata)
    result = np.asarray(out[sl]).copy()
    apply_classes(result, table.fixed(fixes, len(classes) - 1), ids)
    out[sl] = result
    del ids, result
    _let_go(sl)


def clean_components(
    labels: Any, out: Any, *, min_size: int, keep_largest: bool, nodata: int, mapper: Mapper | None = None
) -> int:
    """Write ``labels`` (chunked, e.g. zarr) to ``out`` (same shape and chunks) with the components the
    rule removes relabelled; returns the number of removed components. ``mapper`` runs the per-block
    passes (default: one thread here); ``labels`` and ``out`` must reach wherever it runs them."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    mapper = mapper or thread_map()
    shape = tuple(int(n) for n in labels.shape)
    grid = _chunk_grid(labels)
    summaries: dict[Index, Summary] = dict(
        zip(
            (index for index, _ in grid),
            mapper(summarise, [(labels, sl, shape, keep_largest, nodata) for _, sl in grid]),
            strict=True,
        )
    )
    base: dict[Index, int] = {}
    total = 0
    best: dict[int, tuple[int, int, int]] = {}  # class -> (size, -first, global key)
    for index, _ in grid:
        base[index], s = total, summaries[index]
        for k, (n, negf, local) in s.best.items():
            if k not in best or (n, negf) > best[k][:2]:
                best[k] = (n, negf, local + total)
        total += s.count + 1
    empty = np.zeros(0, np.int64)
    keys = np.concatenate([s.face_ids.astype(np.int64) + base[i] for i, s in summaries.items()] or [empty])
    order = np.argsort(keys)
    keys = keys[order]
    f_size, f_class = (
        np.concatenate([getattr(s, name) for s in summaries.values()] or [empty])[order]
        for name in ("face_size", "face_class")
    )
    # union over the seams: a face pixel and the pixel across the border, same class; each seam's
    # distinct pairs only (the edges were one per seam pixel: ~10 M, a few hundred MB, at 100k²)
    rows, cols = [empty], [empty]
    for index, s in summaries.items():
        for axis in range(len(shape)):
            upper = tuple(i + (a == axis) for a, i in enumerate(index))
            if upper not in summaries:
                continue
            lab_a, id_a = s.faces[(axis, -1)]
            lab_b, id_b = summaries[upper].faces[(axis, 0)]
            same = (lab_a == lab_b) & (lab_a != nodata)
            pair_a, pair_b = unique_pairs(id_a[same], id_b[same])
            rows.append(np.searchsorted(keys, pair_a + base[index]))
            cols.append(np.searchsorted(keys, pair_b + base[upper]))
    n = len(keys)
    r, c = np.concatenate(rows), np.concatenate(cols)
    del rows, cols
    edges = coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(n, n))
    _, root = connected_components(edges, directed=False)
    del edges, r, c
    roots = int(root.max()) + 1 if n else 0
    r_size = np.bincount(root, weights=f_size, minlength=roots).astype(np.int64)
    r_class = np.zeros(roots, np.int64)
    r_class[root] = f_class
    r_ids = -(np.arange(roots) + 1)  # border roots are -1, -2, ...
    r_removed = r_size < min_size
    if keep_largest:
        f_first = np.concatenate([s.face_first for s in summaries.values()] or [empty])[order]
        r_first = np.full(roots, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(r_first, root, f_first)
        best_per_class(best, r_class, r_size, r_first, r_ids)
        winners = np.array([best[int(k)][2] for k in r_class], np.int64)
        r_removed |= winners != r_ids
    ids_dtype = np.int32 if max(total, roots) < np.iinfo(np.int32).max else np.int64
    tables: dict[Index, Table] = {}
    for index, s in summaries.items():
        pos = np.searchsorted(keys, s.face_ids + base[index])
        tables[index] = Table(
            base[index],
            s.face_ids,
            -(root[pos] + 1),
            r_removed[root[pos]],
            [],
            {k: v[2] for k, v in best.items()},
            ids_dtype,
        )
    bare = {index: table.bare() for index, table in tables.items()}
    for index, table in tables.items():  # the neighbours' faces: their local ids, with their tables
        for axis in range(len(shape)):
            for step, side in ((-1, -1), (1, 0)):
                other = tuple(i + step * (a == axis) for a, i in enumerate(index))
                if other in tables:
                    table.halo.append((axis, step, bare[other], summaries[other].faces[(axis, side)][1]))
    del summaries, bare, keys, order, f_size, f_class  # the faces' labels; their ids live on in the halos
    settled = mapper(settle, [(labels, out, sl, tables[i], min_size, keep_largest, nodata) for i, sl in grid])
    removed_count = int(r_removed.sum()) + sum(int(s[0]) for s in settled)
    comp, cls, counts = (np.concatenate([s[k] for s in settled]) for k in (1, 2, 3))
    if comp.size:  # the neighbour classes of removed border components, summed over the blocks
        pair_comp, pair_cls, inverse = unique_pairs(comp, cls, return_inverse=True)
        totals = np.bincount(inverse, weights=counts, minlength=len(pair_comp)).astype(np.int64)
        decided = decide(pair_comp, pair_cls, totals)
        fix_ids = np.array(sorted(decided), np.int64)
        fix_cls = np.array([decided[int(i)] for i in fix_ids], np.uint8)
        calls = []
        for index, sl in grid:
            mine = np.intersect1d(fix_ids, tables[index].own_root)
            if mine.size:
                pick = np.searchsorted(fix_ids, mine)
                calls.append((labels, out, sl, tables[index], (mine, fix_cls[pick]), nodata))
        mapper(fix, calls)
    return removed_count


def _padded(
    table: Table, ids: np.ndarray, gone: np.ndarray, halo: list[tuple[int, int, Table, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """Global identities and removal of the block's pixels with a one-pixel halo from the neighbouring
    blocks' faces (0 / False outside the scene)."""
    shape = tuple(n + 2 for n in ids.shape)
    lut, removed = table.luts(len(gone) - 1)
    pad_id, pad_rm = np.zeros(shape, table.ids_dtype), np.zeros(shape, bool)
    removed[: len(gone)] |= gone
    step, rest = slab_rows(ids.shape), (slice(1, -1),) * (ids.ndim - 1)
    for a in range(0, ids.shape[0], step):
        part = ids[a : a + step]
        pad_id[(slice(1 + a, 1 + a + len(part)), *rest)] = lut[part]
        pad_rm[(slice(1 + a, 1 + a + len(part)), *rest)] = removed[part]
    for axis, step, neighbour, face in halo:
        nb_id, nb_rm = neighbour.ident(face)
        where = [slice(1, -1)] * ids.ndim
        where[axis] = 0 if step < 0 else -1
        pad_id[tuple(where)], pad_rm[tuple(where)] = nb_id, nb_rm
    return pad_id, pad_rm

"""The per-pixel steps of the block-wise component clean-up (``components.py``), each holding a
block's few arrays or a slab's: labelling, first pixels, the classes touching removed components,
relabelling. Pure functions of numpy arrays."""

from __future__ import annotations

import numpy as np

SLAB_PIXELS = 2**18  # pixels the per-pixel steps handle at once: their temporaries stay a few MB
PASS_BYTES_PER_PIXEL = 16  # what one pass holds of its block: ids, labels, identities, masks


def label_block(
    block: np.ndarray, nodata: int, first: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local component ids (0: nodata), the class of each id (index 0 unused) and, with ``first``, the
    block-local raster index of each id's first pixel (else empty). Holds the block, its ids and one
    class's mask and labels at a time (~10 bytes a pixel)."""
    from scipy import ndimage

    ids = np.zeros(block.shape, np.int32)
    comp = np.empty(block.shape, np.int32)
    classes, firsts = [0], [np.full(1, -1, np.int64)]
    for value in distinct_values(block):
        if value == nodata:
            continue
        mask = block == value
        n = int(ndimage.label(mask, output=comp))
        np.add(comp, len(classes) - 1, out=ids, where=mask)
        classes.extend([int(value)] * n)
        if first:
            firsts.append(first_in_raster_order(comp, n))
    return ids, np.array(classes, np.int64), np.concatenate(firsts) if first else np.zeros(0, np.int64)


def distinct_values(block: np.ndarray) -> np.ndarray:
    """``np.unique(block)``; for labels of up to 16 bits a count per value, a slab at a time: one pass
    over the block instead of a sort of a copy of it (~11 % of the clean-up's time at 1792² blocks)."""
    if block.dtype.kind != "u" or block.dtype.itemsize > 2:
        return np.unique(block)
    seen = np.zeros(1 << (8 * block.dtype.itemsize), bool)
    flat = block.reshape(-1)
    for a in range(0, flat.size, SLAB_PIXELS):
        counts = np.bincount(flat[a : a + SLAB_PIXELS])
        seen[: len(counts)] |= counts > 0
    return np.flatnonzero(seen).astype(block.dtype)


def first_in_raster_order(comp: np.ndarray, n: int) -> np.ndarray:
    """Where labels 1..n of one ``ndimage.label`` call first occur (flat index). ndimage numbers
    components in the raster order of their first pixel, so a label's first pixel is where the
    running maximum grows; found slab by slab, in a slab's memory."""
    out = np.empty(n, np.int64)
    flat, seen = comp.reshape(-1), 0
    for a in range(0, flat.size, SLAB_PIXELS):
        v = flat[a : a + SLAB_PIXELS]
        if seen >= n or int(v.max(initial=0)) <= seen:
            continue
        run = np.maximum.accumulate(np.maximum(v, seen))
        before = np.concatenate(([seen], run[:-1]))
        grew = np.flatnonzero(v > before)
        out[v[grew] - 1] = grew + a
        seen = int(run[-1])
    return out


def global_first(
    local: np.ndarray, block_shape: tuple[int, ...], origin: tuple[int, ...], shape: tuple[int, ...]
) -> np.ndarray:
    """Block-local flat indices as global raster indices (the keep-largest tie-break)."""
    coords = np.unravel_index(np.maximum(local, 0), block_shape)
    return np.ravel_multi_index(tuple(c + o for c, o in zip(coords, origin, strict=True)), shape)


def best_per_class(
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


def apply_classes(result: np.ndarray, new: np.ndarray, ids: np.ndarray) -> None:
    """``result`` takes class ``new[id]`` where that is not -1 (slab by slab: no block-sized temporaries)."""
    step = slab_rows(ids.shape)
    for a in range(0, ids.shape[0], step):
        mapped = new[ids[a : a + step]]
        keep = mapped >= 0
        result[a : a + step][keep] = mapped[keep]


def slab_rows(shape: tuple[int, ...]) -> int:
    """Rows of a block handled at once by the per-pixel steps."""
    return max(1, SLAB_PIXELS // max(1, int(np.prod(shape[1:]))))


def ring_counts(
    block: np.ndarray, pad_id: np.ndarray, pad_rm: np.ndarray, nodata: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(removed component, class of a pixel touching it, pixels), each touching pixel counted once per
    component; slab by slab, so memory is a slab's, not the block's."""
    step = slab_rows(block.shape)
    parts = [
        _ring_slab(block[a : a + step], pad_id[a : a + step + 2], pad_rm[a : a + step + 2], nodata)
        for a in range(0, block.shape[0], step)
    ]
    comp, cls, counts = (np.concatenate([p[k] for p in parts]) for k in range(3))
    if not comp.size:
        return comp, cls, counts
    comp, cls, inverse = unique_pairs(comp, cls, return_inverse=True)
    return comp, cls, np.bincount(inverse, weights=counts, minlength=len(comp)).astype(np.int64)


def _ring_slab(
    block: np.ndarray, pad_id: np.ndarray, pad_rm: np.ndarray, nodata: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ndim = block.ndim
    idents = pad_id[(slice(1, -1),) * ndim]
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
    comp, cls, inverse = unique_pairs(comp, cls, return_inverse=True)
    return comp, cls, np.bincount(inverse, minlength=len(comp))


def unique_pairs(a: np.ndarray, b: np.ndarray, return_inverse: bool = False) -> tuple[np.ndarray, ...]:
    """The distinct ``(a[i], b[i])`` pairs of integers, sorted as tuples, as two arrays; with
    ``return_inverse`` also each input pair's position among them.

    One int64 code per pair when ``b`` is non-negative and the codes fit. ``np.unique(..., axis=1)``
    sorts the pairs as records: in the clean-up's class tallies that took 2.5 s of a 15 s clean-up
    (8192², 1792² blocks), the codes under 0.15 s. A seam's pixels mostly repeat a few pairs (one per
    component crossing it), so the union-find is given those, not one edge per seam pixel: at 100k²
    that was ~10 M edges, a few hundred MB in the caller."""
    a, b = np.asarray(a, np.int64).ravel(), np.asarray(b, np.int64).ravel()
    if not a.size:
        return (a, b, np.zeros(0, np.intp)) if return_inverse else (a, b)
    width = int(b.max()) + 1
    i64 = np.iinfo(np.int64)
    if int(b.min()) >= 0 and i64.min // width < int(a.min()) and int(a.max()) < i64.max // width:
        codes, inverse = np.unique(a * width + b, return_inverse=True)
        pair_a, pair_b = codes // width, codes % width  # floor division: right for negative a too
    else:
        pairs, inverse = np.unique(np.stack([a, b]), axis=1, return_inverse=True)
        pair_a, pair_b = pairs[0], pairs[1]
    return (pair_a, pair_b, inverse.ravel()) if return_inverse else (pair_a, pair_b)


def decide(ids: np.ndarray, cls: np.ndarray, counts: np.ndarray) -> dict[int, int]:
    """Per component, the most frequent class (ties: the lowest)."""
    order = np.lexsort((cls, -counts, ids))
    ids, cls = ids[order], cls[order]
    first = np.ones(len(ids), bool)
    first[1:] = ids[1:] != ids[:-1]
    return {int(i): int(k) for i, k in zip(ids[first], cls[first], strict=True)}

"""Block-wise KeepLargestConnectedComponent (pipeline/execution/largest.py) equals MONAI's own transform
on the whole array: random label arrays with random block cuts and random arguments (ties included,
which MONAI breaks by its sort, not by raster order), and TotalSegmentator's real organ labels in
several block sizes. It reads the labels one block at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.execution.largest import Rule, keep_largest

NODATA = 255


def monai(values: np.ndarray, **kw: Any) -> np.ndarray:
    from monai.transforms import KeepLargestConnectedComponent

    return np.asarray(KeepLargestConnectedComponent(**kw)(torch.from_numpy(values[None].astype(np.int64)))[0])


def blockwise(values: np.ndarray, chunks: tuple[int, ...], **kw: Any) -> np.ndarray:
    src = zarr.create_array(store={}, shape=values.shape, dtype="uint8", chunks=chunks)
    src[...] = values
    out = zarr.create_array(store={}, shape=values.shape, dtype="uint8", chunks=chunks)
    applied = kw["applied_labels"]
    rule = Rule(
        None if applied is None else tuple(applied),
        kw["independent"],
        kw["connectivity"],
        kw["num_components"],
        NODATA,
    )
    keep_largest(src, out, rule)
    return out[...]


@st.composite
def cases(draw: Any) -> tuple[np.ndarray, tuple[int, ...], dict[str, Any]]:
    dims = draw(st.sampled_from([2, 3]))
    shape = tuple(draw(st.integers(1, 14 if dims == 2 else 7)) for _ in range(dims))
    classes = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = rng.integers(0, classes, size=shape).astype(np.uint8)
    if draw(st.booleans()):  # blobs with speckle: components of many sizes, and many of size one
        coarse = rng.integers(0, classes, size=tuple(-(-n // 3) for n in shape)).astype(np.uint8)
        values = np.kron(coarse, np.ones((3,) * dims, np.uint8))[tuple(slice(0, n) for n in shape)]
        values = np.where(rng.random(shape) < 0.1, rng.integers(0, classes, shape), values).astype(np.uint8)
    chunks = tuple(draw(st.integers(1, n)) for n in shape)
    kw = {
        "applied_labels": draw(st.none() | st.lists(st.integers(0, 4), min_size=1, max_size=3, unique=True)),
        "independent": draw(st.booleans()),
        "connectivity": draw(st.none() | st.integers(1, dims)),
        "num_components": draw(st.integers(1, 3)),
    }
    return values, chunks, kw


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_equals_monai_for_any_block_cut(case: tuple[np.ndarray, tuple[int, ...], dict[str, Any]]) -> None:
    values, chunks, kw = case
    np.testing.assert_array_equal(blockwise(values, chunks, **kw), monai(values, **kw))


def test_ties_go_where_monais_sort_puts_them() -> None:
    """Specks of one pixel, two kept: which ones MONAI keeps is its sort's choice, not the first ones."""
    rng = np.random.default_rng(1)
    kw = {"applied_labels": [1], "independent": True, "connectivity": 1, "num_components": 2}
    differs = 0
    for _ in range(40):
        values = (rng.random((12, 12)) < 0.3).astype(np.uint8)
        theirs = monai(values, **kw)
        np.testing.assert_array_equal(blockwise(values, (5, 7), **kw), theirs)
        from scipy import ndimage

        comp, _ = ndimage.label(values)
        sizes = np.bincount(comp.ravel())[1:]
        first_two = np.argsort(-sizes, kind="stable")[:2] + 1  # largest, ties to the first in raster order
        differs += not np.array_equal(np.where(np.isin(comp, first_two), values, 0), theirs)
    assert differs > 0  # the raster-order tie rule would not have matched MONAI


@pytest.fixture(scope="module")
def organs(data: Path) -> np.ndarray:
    """TotalSegmentator's CT labels, a few organs kept, with speckle added so there is something to drop."""
    seg = np.asarray(nib.load(str(data / "medical/totalsegmentator/example_seg.nii.gz")).dataobj)
    out = np.select([seg == 5, seg == 1, np.isin(seg, [2, 3])], [1, 2, 3], 0).astype(np.uint8)
    rng = np.random.default_rng(0)
    speckle = rng.random(out.shape) < 0.002
    out[speckle] = rng.integers(1, 4, int(speckle.sum()))
    return out


@pytest.mark.parametrize(
    "kw",
    [
        {"applied_labels": [1, 2, 3], "independent": True, "connectivity": None, "num_components": 1},
        {"applied_labels": [3], "independent": True, "connectivity": 1, "num_components": 2},
        {"applied_labels": [1, 3], "independent": False, "connectivity": None, "num_components": 1},
        {"applied_labels": None, "independent": True, "connectivity": 2, "num_components": 1},
    ],
)
@pytest.mark.parametrize("block", [(16, 16, 16), (40, 24, 32), (64, 64, 64)])
def test_real_organ_labels_equal_monai_in_any_block_size(
    organs: np.ndarray, kw: dict[str, Any], block: tuple[int, ...]
) -> None:
    theirs = monai(organs, **kw)
    assert (theirs != organs).any()  # the speckle was removed, so the comparison means something
    np.testing.assert_array_equal(blockwise(organs, block, **kw), theirs)


class Reads:
    """The label array, recording the size of every read (to show no read is bigger than a block)."""

    def __init__(self, array: Any) -> None:
        self.array, self.shape, self.chunks, self.sizes = array, array.shape, array.chunks, []

    def __getitem__(self, key: Any) -> np.ndarray:
        block = self.array[key]
        self.sizes.append(block.size)
        return block


def test_reads_one_block_at_a_time(organs: np.ndarray) -> None:
    src = zarr.create_array(store={}, shape=organs.shape, dtype="uint8", chunks=(32, 32, 32))
    src[...] = organs
    out = zarr.create_array(store={}, shape=organs.shape, dtype="uint8", chunks=(32, 32, 32))
    reads = Reads(src)
    removed = keep_largest(reads, out, Rule((1, 2, 3), True, None, 1, NODATA))
    assert removed > 0 and max(reads.sizes) <= 32**3 < organs.size
    kw = {"applied_labels": [1, 2, 3], "independent": True, "connectivity": None, "num_components": 1}
    np.testing.assert_array_equal(out[...], monai(organs, **kw))

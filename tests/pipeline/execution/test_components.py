"""Block-wise component clean-up (pipeline/execution/components.py) equals the whole-array reference
for random label arrays and random block cuts, in 2-D and 3-D, and on a real label raster."""

from __future__ import annotations

import tracemalloc

import numpy as np
import rasterio
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.execution.components import Table, _padded, clean_components
from pipeline.job.outputs import remove_small_objects

NODATA = 255


@st.composite
def label_arrays(draw, dims: int):
    shape = tuple(draw(st.integers(1, 14 if dims == 2 else 7)) for _ in range(dims))
    classes = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    values = rng.integers(0, classes, size=shape).astype(np.uint8)
    if draw(st.booleans()):  # blobs rather than salt and pepper: components of many sizes
        coarse = rng.integers(0, classes, size=tuple(-(-n // 3) for n in shape)).astype(np.uint8)
        values = np.kron(coarse, np.ones((3,) * dims, np.uint8))[tuple(slice(0, n) for n in shape)]
        noise = rng.integers(0, classes, size=shape)
        values = np.where(rng.random(shape) < 0.1, noise, values).astype(np.uint8)
    values[rng.random(shape) < draw(st.sampled_from([0.0, 0.05, 0.3]))] = NODATA
    chunks = tuple(draw(st.integers(1, n)) for n in shape)
    return values, chunks


def _blockwise(values: np.ndarray, chunks: tuple[int, ...], min_size: int, keep_largest: bool) -> np.ndarray:
    src = zarr.create_array(store={}, shape=values.shape, dtype="uint8", chunks=chunks)
    src[...] = values
    out = zarr.create_array(store={}, shape=values.shape, dtype="uint8", chunks=chunks)
    clean_components(src, out, min_size=min_size, keep_largest=keep_largest, nodata=NODATA)
    return out[...]


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(case=label_arrays(2), min_size=st.integers(0, 12), keep_largest=st.booleans())
def test_2d_equals_the_whole_array_rule(case, min_size, keep_largest):
    values, chunks = case
    expected = remove_small_objects(values, min_size, NODATA, keep_largest)
    np.testing.assert_array_equal(_blockwise(values, chunks, min_size, keep_largest), expected)


@SETTINGS
@given(case=label_arrays(3), min_size=st.integers(0, 12), keep_largest=st.booleans())
def test_3d_equals_the_whole_array_rule(case, min_size, keep_largest):
    values, chunks = case
    expected = remove_small_objects(values, min_size, NODATA, keep_largest)
    np.testing.assert_array_equal(_blockwise(values, chunks, min_size, keep_largest), expected)


def test_real_land_cover_any_cut(data):
    with rasterio.open(data / "geo/derived/S2A_T33UUU_20170216_osm_landcover_10m.tif") as src:
        values = src.read(1)[:256, :320].copy()  # classes 0..8, many small polygons
    for min_size, keep in ((50, False), (0, True), (20, True)):
        expected = remove_small_objects(values, min_size, NODATA, keep)
        assert (expected != values).any()
        for chunks in ((100, 77), (64, 320)):
            np.testing.assert_array_equal(_blockwise(values, chunks, min_size, keep), expected)


def test_slab_by_slab_steps_give_the_same_labels(data, monkeypatch):
    """The per-pixel steps run a few rows at a time (memory): cut them into slabs of a few pixels."""
    import pipeline.execution.component_pixels as pixels

    with rasterio.open(data / "geo/derived/S2A_T33UUU_20170216_osm_landcover_10m.tif") as src:
        values = src.read(1)[:120, :150].copy()
    monkeypatch.setattr(pixels, "SLAB_PIXELS", 7)  # 1 row at a time
    for min_size, keep in ((40, False), (10, True)):
        expected = remove_small_objects(values, min_size, NODATA, keep)
        assert (expected != values).any()
        np.testing.assert_array_equal(_blockwise(values, (50, 61), min_size, keep), expected)


def test_identities_past_int32_stay_exact():
    """Identities are exact in the table's dtype: int64 for a scene with over 2^31 components, else int32."""
    ids = np.array([[1, 2], [0, 1]], np.int32)
    gone = np.array([False, True, False])
    for base, dtype in ((7, np.int32), (2**31, np.int64)):
        own = np.array([2], np.int64), np.array([-5], np.int64), np.array([True])
        table = Table(base, *own, [], {}, dtype)
        # the neighbour above: its local id 1 an inner component, its id 2 the removed border root -3
        neighbour = Table(
            base + 39, np.array([2], np.int32), np.array([-3], np.int32), np.array([True]), [], {}, dtype
        )
        halo = [(0, -1, neighbour, np.array([1, 2], np.int32))]
        pad_id, pad_rm = _padded(table, ids, gone, halo)
        assert pad_id.dtype == dtype
        assert pad_id[1:-1, 1:-1].tolist() == [[base + 1, -5], [0, base + 1]]
        assert pad_id[0, 1:-1].tolist() == [base + 40, -3]
        assert pad_rm[1:-1, 1:-1].tolist() == [[True, True], [False, True]]


def test_the_callers_tables_grow_with_crossing_components_not_seam_pixels(tmp_path):
    """Sixteen one-row blocks of 100k pixels: fifteen seams of 100k pixels, each crossed by 20 stripes.
    The caller joins the stripes from their distinct pairs (not an edge per seam pixel: 1.5 M here)
    and holds each face once (not again, mapped, in each neighbour's table): its peak stays within
    twice the faces' bytes, one block's pass included (it was 6.8 times: 104 MB for 15 MB of faces)."""
    import scipy.sparse.csgraph  # noqa: F401  (imported by the clean-up: not a cost of this scene)

    blocks, width = 16, 100_000
    values = np.broadcast_to(((np.arange(width) // 5000) % 3).astype(np.uint8), (blocks, width)).copy()
    values[:, 7] = 1  # a one-pixel-wide column, 16 pixels: to remove
    chunks = (1, width)
    src = zarr.create_array(
        store=str(tmp_path / "src.zarr"), shape=values.shape, dtype="uint8", chunks=chunks
    )
    src[...] = values
    out = zarr.create_array(
        store=str(tmp_path / "out.zarr"), shape=values.shape, dtype="uint8", chunks=chunks
    )
    faces_bytes = blocks * 2 * width * (1 + 4)  # each block's upper and lower face: labels and int32 ids
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        removed = clean_components(src, out, min_size=blocks + 1, keep_largest=False, nodata=NODATA)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert removed == 1 and (out[:, 7] == 0).all() and (out[:, 8:] == values[:, 8:]).all()
    assert peak < 2 * faces_bytes, f"{peak / 2**20:.1f} MB for {faces_bytes / 2**20:.1f} MB of faces"

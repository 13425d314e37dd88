"""The work store's block files: what a merge reads back is what the compute pass stored."""

from __future__ import annotations

import numpy as np

from pipeline.core.blending import loaded
from pipeline.core.box import Box
from pipeline.execution.workstore import StoredArray, WorkStore, _load_stored_npz


def test_block_file_reads_back_exactly(tmp_path):
    store = WorkStore(tmp_path / "work")
    store.prepare({"t": 1}, (300, 200), (128, 128), 4, True)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (100, 90)).astype(np.uint8)
    probs = rng.integers(0, 255, (4, 100, 90)).astype(np.uint8)
    pieces = [(Box((0, 120), (128, 140)), rng.random((5, 128, 20)).astype(np.float32)),
              (Box((120, 0), (140, 140)), rng.random((5, 20, 140)).astype(np.float32))]  # fmt: skip
    store.put_block((0, 0), Box((10, 10), (110, 100)), labels, probs, pieces)
    store._cache.clear()  # read it from disk, as a merge of the next row does
    got = store.get_block((0, 0))
    with np.load(store.block_path((0, 0))) as data:  # numpy's own reader of the same file
        expected = {k: data[k] for k in data.files}
    assert list(got) == list(expected)
    for name, array in expected.items():
        assert got[name].dtype == array.dtype and got[name].flags.writeable
        np.testing.assert_array_equal(got[name], array)
    read_pieces = store.pieces((0, 0))
    assert [b for b, _ in read_pieces] == [b for b, _ in pieces]
    for (_, a), (_, b) in zip(read_pieces, pieces, strict=True):
        np.testing.assert_array_equal(a, b)


def test_compressed_members_are_read_too(tmp_path):
    arrays = {"a": np.arange(12, dtype=np.int64).reshape(3, 4), "b": np.linspace(0, 1, 50, dtype=np.float32)}
    np.savez_compressed(tmp_path / "c.npz", **arrays)
    got = _load_stored_npz(tmp_path / "c.npz")
    assert list(got) == ["a", "b"]
    for name, array in arrays.items():
        np.testing.assert_array_equal(got[name], array)


def test_a_chunk_of_fill_values_is_written_and_reads_back(tmp_path):
    store = WorkStore(tmp_path / "work")
    store.prepare({"t": 1}, (64, 64), (32, 32), 2, False)
    store.labels()[0:32, 0:32] = np.zeros((32, 32), np.uint8)
    assert (tmp_path / "work" / "labels.zarr" / "0.0").exists()
    np.testing.assert_array_equal(store.labels("r")[0:32, 0:32], 0)


def test_a_big_block_file_is_not_kept_and_merges_read_only_their_shares(tmp_path, monkeypatch):
    """A block file over ``CACHE_ENTRY_BYTES`` (an nnU-Net slab's window shares) is not kept: its own
    results are read back without the shares, and a merge gets only the shares that meet its seam bands,
    each read from disk when used."""
    import pipeline.execution.workstore as workstore

    monkeypatch.setattr(workstore, "CACHE_ENTRY_BYTES", 20_000)
    store = WorkStore(tmp_path / "work")
    store.prepare({"t": 1}, (64, 64, 64), (32, 64, 64), 2, False)
    rng = np.random.default_rng(1)
    below, above = Box((24, 0, 0), (32, 64, 64)), Box((64, 0, 0), (72, 64, 64))
    pieces = [(below, rng.random((2, 8, 64, 64)).astype(np.float32), (24, 0, 0)),
              (below, rng.random((2, 8, 64, 64)).astype(np.float32), (24, 0, 8)),
              (above, rng.random((3, 8, 64, 64)).astype(np.float16), (0, 0, 0))]  # fmt: skip
    labels = rng.integers(0, 2, (32, 64, 64)).astype(np.uint8)
    store.put_block((1, 0, 0), Box((32, 0, 0), (64, 64, 64)), labels, None, pieces)
    assert not store._cache
    own = store.get_block((1, 0, 0))
    assert not any(name.startswith("piece") for name in own)
    np.testing.assert_array_equal(own["labels"], labels)
    got = store.pieces((1, 0, 0), [Box((16, 0, 0), (30, 64, 64))])
    assert [(b, r) for b, _, r in got] == [(b, r) for b, _, r in pieces[:2]]
    for (_, a, _), (_, b, _) in zip(got, pieces[:2], strict=True):
        assert isinstance(a, StoredArray)  # read when the merge gets to it, one at a time
        assert (a.dtype, a.shape) == (b.dtype, b.shape)
        np.testing.assert_array_equal(a.load(), b)
        assert a.load().flags.writeable
    (lead,) = store.pieces((1, 0, 0), [Box((64, 0, 0), (70, 64, 64))])
    assert lead[1].dtype == np.float16 and lead[2] == (0, 0, 0)
    np.testing.assert_array_equal(loaded(lead[1]), pieces[2][1])
    assert len(store.pieces((1, 0, 0))) == 3
    assert not store._cache

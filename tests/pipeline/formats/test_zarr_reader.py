"""Zarr / OME-Zarr reader: plain arrays, axes, OME metadata, damaged stores, object storage."""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.core.box import Box
from pipeline.errors import FormatError, InputError
from pipeline.formats.zarr_reader import open_zarr, storage_options
from tests.pipeline.formats.sample_data import whole


@pytest.mark.parametrize("fmt", [2, 3])
def test_plain_arrays_round_trip(tmp_path: Path, fmt: int) -> None:
    rng = np.random.default_rng(fmt)
    img2 = rng.integers(0, 1000, (40, 50), dtype=np.uint16)
    vol = rng.random((6, 20, 30), dtype=np.float32)
    a = zarr.create_array(
        store=str(tmp_path / "a.zarr"), shape=img2.shape, dtype=img2.dtype, chunks=(16, 16), zarr_format=fmt
    )
    a[:] = img2
    v = zarr.create_array(
        store=str(tmp_path / "v.zarr"), shape=vol.shape, dtype=vol.dtype, chunks=(3, 8, 8), zarr_format=fmt
    )
    v[:] = vol
    s2, s3 = open_zarr(tmp_path / "a.zarr"), open_zarr(str(tmp_path / "v.zarr"))
    assert s2.shape == (1, 40, 50) and s2.dtype == np.uint16 and s2.meta is None
    assert s3.shape == (1, 6, 20, 30) and s3.axes == ("z", "y", "x")
    assert np.array_equal(whole(s2)[0], img2) and np.array_equal(whole(s3)[0], vol)
    part = s2.read(Box((-2, 45), (5, 55)), fill=9)
    assert part.shape == (1, 7, 10) and (part[0, :2] == 9).all() and (part[0, :, 5:] == 9).all()
    assert np.array_equal(part[0, 2:, :5], img2[:5, 45:])
    assert s2.read_nodata(Box((0, 0), (4, 4))) is None
    back = pickle.loads(pickle.dumps(s3))
    assert np.array_equal(whole(back), whole(s3))


def test_channel_axes_and_single_array_groups(tmp_path: Path) -> None:
    data = np.arange(2 * 5 * 7, dtype=np.int16).reshape(5, 7, 2)
    arr = zarr.create_array(
        store=str(tmp_path / "yxb.zarr"),
        shape=data.shape,
        dtype=data.dtype,
        chunks=(5, 7, 1),
        zarr_format=2,
        attributes={"_ARRAY_DIMENSIONS": ["y", "x", "band"]},
    )
    arr[:] = data
    s = open_zarr(tmp_path / "yxb.zarr")
    assert s.shape == (2, 5, 7) and np.array_equal(whole(s), np.moveaxis(data, -1, 0))
    four = zarr.create_array(
        store=str(tmp_path / "czyx.zarr"), shape=(3, 2, 4, 4), dtype="u1", chunks=(1, 2, 4, 4)
    )
    four[:] = 1
    assert open_zarr(tmp_path / "czyx.zarr").shape == (3, 2, 4, 4)
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("only", shape=(4, 4), dtype="u1", chunks=(2, 2))[:] = 5
    one = open_zarr(tmp_path / "g.zarr")
    assert one.uri.endswith("g.zarr/only") and (whole(one) == 5).all()
    group.create_array("second", shape=(4, 4), dtype="u1", chunks=(2, 2))
    with pytest.raises(FormatError, match="2 arrays"):
        open_zarr(tmp_path / "g.zarr")


def test_missing_or_corrupt_metadata_is_a_format_error(tmp_path: Path) -> None:
    for fmt, meta in ((2, ".zarray"), (3, "zarr.json")):
        path = tmp_path / f"m{fmt}.zarr"
        zarr.create_array(store=str(path), shape=(4, 4), dtype="u1", chunks=(2, 2), zarr_format=fmt)[:] = 1
        (path / meta).write_text("{not json")
        with pytest.raises(FormatError, match="corrupt") as err:
            open_zarr(path)
        assert str(path) in str(err.value)
        (path / meta).unlink()
        with pytest.raises(FormatError, match="metadata"):
            open_zarr(path)
    with pytest.raises(InputError, match="no such"):
        open_zarr(tmp_path / "absent.zarr")


def test_ome_group_without_multiscales_is_refused(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w")
    group.attrs["ome"] = {"version": "0.5"}
    group.create_array("0", shape=(4, 4), dtype="u1", chunks=(2, 2))
    with pytest.raises(FormatError, match="multiscales"):
        open_zarr(tmp_path / "ome.zarr")
    old = zarr.open_group(str(tmp_path / "v04.zarr"), mode="w", zarr_format=2)
    old.attrs["multiscales"] = [{"version": "0.4", "datasets": [{"path": "missing"}]}]
    with pytest.raises(FormatError, match="multiscales"):
        open_zarr(tmp_path / "v04.zarr")


def test_time_axis_dropped_when_single_refused_otherwise(tmp_path: Path) -> None:
    for steps in (1, 3):
        group = zarr.open_group(str(tmp_path / f"t{steps}.zarr"), mode="w", zarr_format=2)
        axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}]
        axes += [{"name": n, "type": "space"} for n in "zyx"]
        group.attrs["multiscales"] = [
            {
                "version": "0.4",
                "axes": axes,
                "datasets": [
                    {
                        "path": "0",
                        "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 2.0, 0.5, 0.5]}],
                    }
                ],
            }
        ]
        arr = group.create_array("0", shape=(steps, 2, 3, 8, 8), dtype="f4", chunks=(1, 1, 3, 8, 8))
        arr[:] = np.arange(steps * 2 * 3 * 64, dtype="f4").reshape(arr.shape)
        if steps == 1:
            s = open_zarr(tmp_path / "t1.zarr")
            assert s.shape == (2, 3, 8, 8) and s.meta.spacing == (2.0, 0.5, 0.5)
            assert np.array_equal(whole(s), arr[0])
        else:
            with pytest.raises(InputError, match="time"):
                open_zarr(tmp_path / "t3.zarr")


def test_deleted_chunk_reads_fill_value(tmp_path: Path) -> None:
    """zarr's own rule: an absent chunk is empty space holding fill_value, not an error."""
    path = tmp_path / "holes.zarr"
    arr = zarr.create_array(store=str(path), shape=(8, 8), dtype="u1", chunks=(4, 4), fill_value=7)
    arr[:] = 1
    os.remove(path / "c" / "1" / "0")
    got = whole(open_zarr(path))[0]
    assert (got[4:, :4] == 7).all() and (got[:4] == 1).all() and (got[4:, 4:] == 1).all()


def test_s3_storage_options_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert storage_options("s3://b/x.zarr") == {"endpoint_url": "http://127.0.0.1:9"}
    assert storage_options("/local/x.zarr") == {}
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:10")
    monkeypatch.setenv("AWS_NO_SIGN_REQUEST", "YES")
    assert storage_options("s3a://b/x.zarr") == {"endpoint_url": "http://127.0.0.1:10", "anon": True}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_reads_from_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=f"http://{host}:{port}", skip_instance_cache=True)
        fs.mkdir("bucket")
        local = tmp_path / "v.zarr"
        data = np.arange(6 * 10 * 12, dtype=np.int16).reshape(6, 10, 12)
        zarr.create_array(store=str(local), shape=data.shape, dtype=data.dtype, chunks=(3, 5, 6))[:] = data
        fs.put(str(local), "bucket/v.zarr", recursive=True)
        s = open_zarr("s3://bucket/v.zarr")
        assert s.shape == (1, 6, 10, 12) and np.array_equal(whole(s)[0], data)
        with pytest.raises(FormatError):
            open_zarr("s3://bucket/none.zarr")
    finally:
        server.stop()

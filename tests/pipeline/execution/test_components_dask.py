"""The component clean-up runs where the blocks are: on real `dask worker` processes (started as the
Docker images start them) its per-block passes give the whole-array rule's labels, for any cut and
worker count, and a `--min-object-size` job on the cluster runs them there."""

from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio
import zarr

from pipeline.execution.components import clean_components, thread_map
from pipeline.execution.distributed import DaskExecutor
from pipeline.job.config import load_config
from pipeline.job.outputs import remove_small_objects
from pipeline.job.skeleton import run_job
from tests.pipeline.execution.test_distributed import _start_cluster, _stop

NODATA = 255
LAND_COVER = "geo/derived/S2A_T33UUU_20170216_osm_landcover_10m.tif"
SMALL = "geo/rasterio/rgb-byte-tenth.tif"  # 79x71: the whole-array reference is slow on many objects


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    procs, client = _start_cluster(tmp_path_factory.mktemp("cluster"))
    yield client, client.scheduler.address
    _stop(procs, client)


def _on_disk(path, values: np.ndarray, chunks: tuple[int, ...]) -> tuple[zarr.Array, zarr.Array]:
    src = zarr.create_array(store=str(path / "src.zarr"), shape=values.shape, dtype="uint8", chunks=chunks)
    src[...] = values
    out = zarr.create_array(store=str(path / "out.zarr"), shape=values.shape, dtype="uint8", chunks=chunks)
    return src, out


def test_worker_processes_give_the_whole_array_rule_for_any_cut(tmp_path, data, cluster):
    client, _ = cluster
    executor = DaskExecutor(client)
    with rasterio.open(data / LAND_COVER) as f:
        values = f.read(1)[:256, :320].copy()  # classes 0..8, many small polygons
    pids = set(client.run(os.getpid).values())
    for min_size, keep in ((50, False), (0, True), (20, True)):
        expected = remove_small_objects(values, min_size, NODATA, keep)
        assert (expected != values).any()
        for chunks in ((100, 77), (64, 320), (256, 320)):
            case = tmp_path / f"{min_size}-{keep}-{chunks[0]}x{chunks[1]}"
            src, out = _on_disk(case, values, chunks)
            before = executor.tasks_submitted
            removed = clean_components(src, out, min_size=min_size, keep_largest=keep, nodata=NODATA,
                                       mapper=executor.map)  # fmt: skip
            np.testing.assert_array_equal(out[...], expected)
            assert removed > 0 and executor.tasks_submitted > before  # the passes went to the cluster
    # a pass's call really runs in a worker process, not here
    # (a builtin: the workers of a clean checkout cannot import this test module)
    ran = executor.map(os.getpid, [()] * 8)
    assert set(ran) <= pids and os.getpid() not in ran


def test_threads_and_one_thread_agree(tmp_path, data):
    with rasterio.open(data / LAND_COVER) as f:
        values = f.read(1)[:200, :200].copy()
    expected = remove_small_objects(values, 30, NODATA, True)
    for threads in (1, 3):
        src, out = _on_disk(tmp_path / str(threads), values, (64, 50))
        clean_components(src, out, min_size=30, keep_largest=True, nodata=NODATA, mapper=thread_map(threads))
        np.testing.assert_array_equal(out[...], expected)


def _labels(out, data, bundle, **over) -> np.ndarray:
    cfg = load_config(None, {"input": str(data / SMALL), "output": str(out), "model": str(bundle), **over})
    (result,) = run_job(cfg)
    assert result.status == "ok", result.reason
    with rasterio.open(result.outputs["labels"]) as f:
        return f.read(1)


def test_a_clean_up_job_on_the_cluster_is_the_whole_array_rule(tmp_path, data, bundle_factory, cluster):
    _, address = cluster
    bundle = bundle_factory(2, 3, ["a", "b", "c"], 32, [4, 8])
    plain = _labels(tmp_path / "plain", data, bundle, **{"tiling.block_size": [128]})
    expected = remove_small_objects(plain, 6, NODATA, True)
    assert (expected != plain).sum() > 10  # the rule changes something on this scene
    over = {"outputs.min_object_size": 6, "outputs.keep_largest": True, "execution.scheduler": address}
    for block in (32, 48):
        got = _labels(tmp_path / str(block), data, bundle, **{"tiling.block_size": [block], **over})
        np.testing.assert_array_equal(got, expected)

"""I/O off the model's path (pipeline/execution/overlap.py): a block read in strips on several threads
is the same bytes as one read, on real tiled GeoTIFFs, inside and across the raster's edges; writes
behind stay in order and a failed write stops the pass; a job's outputs do not depend on how many
threads read."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.box import Box
from pipeline.execution.overlap import StripReader, WriteBehind, parallel_reads, strip_rows
from pipeline.formats.geotiff import open_geotiff
from pipeline.job.config import load_config
from pipeline.job.skeleton import run_job

S2 = "geo/derived/S2A_T33UUU_20170216_L1C_B02-B03-B04-B08_10m.tif"  # 768x1536, 256² deflate tiles
STRIPS = "geo/solaris/road_mask_input.tif"  # 1300², 3-row strips


def test_strips_cover_the_box_on_tile_rows():
    box = Box((-40, 0), (1000, 10))
    strips = strip_rows(box, 256, 3)
    assert strips[0][0] == -40 and strips[-1][1] == 1000
    assert all(a == b for (_, a), (b, _) in itertools.pairwise(strips))
    assert all(b % 256 == 0 for _, b in strips[:-1]) and len(strips) == 3


@pytest.mark.parametrize("name", [S2, STRIPS])
def test_a_strip_read_is_the_same_bytes_as_one_read(data, name):
    scene = open_geotiff(str(data / name))
    reader = parallel_reads(scene, threads=3)
    assert isinstance(reader, StripReader)
    h, w = scene.spatial_shape
    try:
        for box in (Box((0, 0), (h, w)), Box((100, 37), (700, 400)), Box((-64, -64), (h + 64, 300))):
            whole, mask = scene.read_with_nodata(box)
            parts, part_mask = reader.read_with_nodata(box)
            assert parts.dtype == whole.dtype
            np.testing.assert_array_equal(parts, whole)
            assert (mask is None) == (part_mask is None)
            if mask is not None:
                np.testing.assert_array_equal(part_mask, mask)
    finally:
        reader.close()
        scene.close()


def test_only_gdal_scenes_on_their_own_grid_read_in_strips(data):
    scene = open_geotiff(str(data / S2))
    try:
        assert parallel_reads(scene, threads=1) is None
        assert parallel_reads(object(), threads=4) is None
    finally:
        scene.close()


def test_writes_behind_run_in_order_one_at_a_time_and_a_failure_stops_the_pass():
    done: list[int] = []
    running = threading.Semaphore(1)

    def write(i: int):
        def run() -> None:
            assert running.acquire(blocking=False)  # never two at once
            time.sleep(0.01)
            done.append(i)
            running.release()

        return run

    writer = WriteBehind()
    for i in range(6):
        writer.submit(write(i))
    writer.close()
    assert done == list(range(6))

    def broken() -> None:
        raise OSError("disk full")

    writer = WriteBehind()
    writer.submit(broken)
    with pytest.raises(OSError, match="disk full"):
        writer.submit(write(7))
    writer.close()


def test_job_outputs_do_not_depend_on_read_threads(tmp_path, data, bundle_factory, monkeypatch):
    bundle = bundle_factory(2, 4, ["land", "water"], 64, [4, 8])
    outputs = []
    for threads in ("1", "3"):
        monkeypatch.setenv("TILEWISE_READ_THREADS", threads)
        out = tmp_path / threads
        over = {"tiling.block_size": [384], "outputs.probabilities": True, "outputs.quicklook": False}
        cfg = load_config(None, {"input": str(data / S2), "output": str(out), "model": str(bundle), **over})
        (result,) = run_job(cfg)
        assert result.status == "ok", result.reason
        outputs.append({k: Path(result.outputs[k]).read_bytes() for k in ("labels", "probabilities")})
    assert outputs[0] == outputs[1]

"""The job's component clean-up (pipeline/job/outputs.py): ``--min-object-size`` and ``--keep-largest``
give the whole-array rule's labels, block by block, whatever the block size."""

from __future__ import annotations

import numpy as np
import rasterio

from pipeline.job.config import load_config
from pipeline.job.outputs import remove_small_objects
from pipeline.job.skeleton import run_job

SRC = "geo/rasterio/rgb-byte-tenth.tif"  # 79x71: the whole-array reference is slow on many objects


def _labels(out, data, bundle, **over) -> np.ndarray:
    cfg = load_config(None, {"input": str(data / SRC), "output": str(out), "model": str(bundle), **over})
    (result,) = run_job(cfg)
    assert result.status == "ok", result.reason
    with rasterio.open(result.outputs["labels"]) as f:
        return f.read(1)


def test_clean_up_is_the_whole_array_rule_for_any_block(tmp_path, data, bundle_factory):
    bundle = bundle_factory(2, 3, ["a", "b", "c"], 32, [4, 8])
    plain = _labels(tmp_path / "plain", data, bundle, **{"tiling.block_size": [128]})
    for over, (size, keep) in (
        ({"outputs.min_object_size": 8}, (8, False)),
        ({"outputs.keep_largest": True, "outputs.min_object_size": 5}, (5, True)),
    ):
        expected = remove_small_objects(plain, size, 255, keep)
        assert (expected != plain).sum() > 10  # the rule changes something on this scene
        for block in (32, 128):
            name = f"{size}-{keep}-{block}"
            got = _labels(tmp_path / name, data, bundle, **{"tiling.block_size": [block], **over})
            np.testing.assert_array_equal(got, expected)

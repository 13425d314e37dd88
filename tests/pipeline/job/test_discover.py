"""Discovery's path rules: where a scene's outputs go under OUTPUT (mirroring the input folders)."""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath

import numpy as np
import rasterio

from pipeline.job.config import load_config
from pipeline.job.discover import input_root, mirrored_dir
from pipeline.job.skeleton import run_job


def test_outputs_mirror_the_input_subfolders():
    cases = {
        ("in/a/x.tif", "in"): "a",
        ("in/a/x.tif", "in/"): "a",
        ("in/x.tif", "in"): "",
        ("in/x.tif", "in/x.tif"): "",  # a single file: straight into OUTPUT
        ("in/a/b/x.tif", "in/*/*/x.tif"): "a/b",  # a glob mirrors below its fixed folder
        ("in/a/CASE_0000.nii.gz", "in/**/*.nii.gz"): "a",
        ("s3://bkt/in/a/b/x.tif", "s3://bkt/in"): "a/b",
        ("s3://bkt/in/a/x.tif?X-Amz-Signature=s", "s3://bkt/in/"): "a",
        ("elsewhere/x.tif", "in"): "",  # not under the input folder: no subfolder, never ..
        ("in2/x.tif", "in"): "",
    }
    for (uri, target), want in cases.items():
        assert mirrored_dir(uri, target) == PurePosixPath(want), (uri, target)
    assert input_root("file:///data/in/") == "/data/in"


def test_same_name_scenes_in_two_folders_both_succeed_and_resume(tmp_path, data, bundle_factory):
    """``a/x.tif`` and ``b/x.tif`` (different pixels) land in ``OUT/a`` and ``OUT/b``; a rerun skips both."""
    src = data / "geo" / "rasterio" / "rgb-byte-tenth.tif"
    inp = tmp_path / "in"
    for sub in ("a", "b"):
        (inp / sub).mkdir(parents=True)
    shutil.copy(src, inp / "a" / "x.tif")
    with rasterio.open(src) as ds:
        profile, pixels = ds.profile, ds.read()
    with rasterio.open(inp / "b" / "x.tif", "w", **profile) as ds:
        ds.write(np.ascontiguousarray(pixels[:, ::-1]))  # the same grid, upside-down pixels
    bundle = bundle_factory(2, 3, ["land", "water"], 64, [4, 8])
    out = tmp_path / "out"
    cfg = load_config(None, {"input": str(inp), "output": str(out), "model": str(bundle)})
    results = run_job(cfg)
    assert [r.status for r in results] == ["ok", "ok"], [r.reason for r in results]
    labels = {r.uri: Path(r.outputs["labels"]) for r in results}
    assert labels == {str(inp / s / "x.tif"): out / s / "x_labels.tif" for s in ("a", "b")}
    with rasterio.open(out / "a" / "x_labels.tif") as a, rasterio.open(out / "b" / "x_labels.tif") as b:
        assert not np.array_equal(a.read(1), b.read(1))
    names = ["x_item.json", "x_labels.qml", "x_labels.tif", "x_labels.tif.aux.xml", "x_quicklook.png"]
    assert sorted(p.name for p in (out / "a").iterdir()) == [*names, "x_report.json"]
    again = run_job(cfg)
    assert [r.status for r in again] == ["skipped", "skipped"]

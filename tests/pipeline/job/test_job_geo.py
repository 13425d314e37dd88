"""The one-scene job on real GeoTIFFs: exact output, georeferencing kept, COG valid, resume, atomicity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from models.bundle import load_bundle
from pipeline import infer_labels
from pipeline.engine.predictor import Predictor
from pipeline.execution.preprocess import Preprocessor
from pipeline.formats.geotiff import open_geotiff
from pipeline.job.config import load_config
from pipeline.job.skeleton import run_job

GEO = [
    ("geo/rasterio/RGB.byte.tif", 3),
    ("geo/solaris/sample_geotiff.tif", 1),
    ("geo/solaris/road_mask_input.tif", 1),
    ("geo/derived/S2A_T33UUU_20170216_L1C_B02-B03-B04-B08_10m.tif", 4),
]


def _job(tmp: Path, src: Path, bundle: Path, **over) -> list:
    cfg = load_config(None, {"input": str(src), "output": str(tmp), "model": str(bundle), **over})
    return run_job(cfg)


@pytest.mark.parametrize(("rel", "bands"), GEO)
def test_labels_keep_georeferencing_and_validate(tmp_path, data, bundle_factory, rel, bands):
    src = data / rel
    bundle = bundle_factory(2, bands, ["a", "b", "c"], 128, [8, 16])
    (result,) = _job(tmp_path, src, bundle, **{"tiling.block_size": [256], "outputs.probabilities": True})
    assert result.status == "ok", result.reason
    out = Path(result.outputs["labels"])
    assert cog_validate(str(out))[0]
    assert cog_validate(result.outputs["probabilities"])[0]
    with rasterio.open(src) as a, rasterio.open(out) as b:
        assert b.crs == a.crs and b.transform == a.transform and b.shape == a.shape
        assert b.dtypes[0] == "uint8" and b.nodata == 255
        labels = b.read(1)
        cmap = b.colormap(1)
        assert cmap[0][:3] == load_bundle(bundle).class_colors[0]
        if a.nodata is not None:  # nodata pixels of the input are nodata in the labels
            invalid = (a.read() == a.nodata).all(axis=0)
            assert (labels[invalid] == 255).all()
            assert (labels[~invalid] < 3).all()
    report = json.loads(Path(result.outputs["report"]).read_text())
    assert sum(c["pixels"] for c in report["classes"]) + report["nodata_pixels"] == labels.size
    assert all("area_ha" in c for c in report["classes"])
    assert not any(".tw-tmp-" in p.name for p in tmp_path.iterdir())
    assert not (tmp_path / ".tilewise-work" / f"{out.name}").exists()


def test_job_equals_whole_image_inference_for_any_block_size(tmp_path, data, bundle_factory):
    """The file pipeline is the same maths as infer_labels on the preprocessed image."""
    src = data / "geo/rasterio/RGB.byte.tif"
    path = bundle_factory(2, 3, ["a", "b", "c"], 128, [8, 16])
    bundle = load_bundle(path)
    scene = open_geotiff(str(src))
    pre = Preprocessor.from_bundle(bundle, scene)
    image, invalid = pre.apply(scene.read(scene_box(scene)), scene.read_nodata(scene_box(scene)))
    pred = Predictor(bundle.build(), activation="softmax")
    expect = infer_labels(image, pred, patch_size=128, mask=invalid, block_size=(718, 791))
    for i, block in enumerate([[128], [200, 333], [1024]]):
        (r,) = _job(tmp_path / str(i), src, path, **{"tiling.block_size": block})
        with rasterio.open(r.outputs["labels"]) as ds:
            assert (ds.read(1) == expect).all(), block


def scene_box(scene):
    from pipeline.core.box import Box

    return Box.from_shape(scene.shape[1:])


def test_existing_outputs_are_skipped_not_clobbered(tmp_path, data, bundle_factory):
    src = data / "geo/rasterio/rgb-byte-tenth.tif"
    bundle = bundle_factory(2, 3, ["a", "b"], 32, [4, 8])
    (first,) = _job(tmp_path, src, bundle)
    before = Path(first.outputs["labels"]).stat().st_mtime_ns
    (second,) = _job(tmp_path, src, bundle)
    assert second.status == "skipped"
    assert Path(first.outputs["labels"]).stat().st_mtime_ns == before
    (third,) = _job(tmp_path, src, bundle, **{"outputs.overwrite": True})
    assert third.status == "ok"


def test_bad_scene_fails_alone_with_reason_and_no_output(tmp_path, data, bundle_factory):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.tif").write_bytes((data / "geo/rasterio/rgb-byte-tenth.tif").read_bytes())
    (folder / "broken.tif").write_bytes((data / "geo/rasterio/RGB.byte.tif").read_bytes()[:5000])
    bundle = bundle_factory(2, 3, ["a", "b"], 32, [4, 8])
    results = {r.stem: r for r in _job(tmp_path / "out", folder, bundle)}
    assert results["good"].status == "ok"
    assert results["broken"].status == "failed"
    assert "broken.tif" in results["broken"].reason and "\n" not in results["broken"].reason
    assert not (tmp_path / "out" / "broken_labels.tif").exists()


def test_cli_exit_codes(tmp_path, data, bundle_factory):
    bundle = bundle_factory(2, 3, ["a", "b"], 32, [4, 8])
    cmd = [sys.executable, "-m", "flows.cli", "run"]
    ok = subprocess.run(
        [*cmd, str(data / "geo/rasterio/rgb-byte-tenth.tif"), str(tmp_path / "o"), "-m", str(bundle)],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    wrong = subprocess.run(
        [*cmd, str(data / "geo/solaris/sample_geotiff.tif"), str(tmp_path / "o2"), "-m", str(bundle)],
        capture_output=True,
        text=True,
    )
    assert wrong.returncode == 1
    assert "sample_geotiff.tif" in wrong.stderr and "bands" in wrong.stderr
    assert "Traceback" not in wrong.stderr + wrong.stdout


def _write_big(path: Path, data: Path) -> None:
    """A 1536x768 4-band real scene (the S2 clip) copied as a striped GeoTIFF."""
    with rasterio.open(data / "geo/derived/S2A_T33UUU_20170216_L1C_B02-B03-B04-B08_10m.tif") as src:
        profile = src.profile
        profile.update(tiled=False, compress=None)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(src.read())


def test_resume_after_sigkill_is_byte_identical(tmp_path, data, bundle_factory):
    src = tmp_path / "s2.tif"
    _write_big(src, data)
    bundle = bundle_factory(2, 4, ["land", "water"], 64, [32, 64, 128])
    args = [sys.executable, "-m", "flows.cli", "run", str(src)]
    opts = ["-m", str(bundle), "--block-size", "128", "--keep-work", "--no-polygons"]
    clean = subprocess.run([*args, str(tmp_path / "clean"), *opts], capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen([*args, str(out), *opts], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = out / ".tilewise-work"
    deadline = time.time() + 420  # CLI start-up is slow on a loaded machine
    while time.time() < deadline:
        merged = list(work.glob("*/merged/*")) if work.exists() else []
        if len(merged) >= 12:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "s2_labels.tif").exists()  # nothing final before the blocks are done
    (scene_work,) = [p for p in work.iterdir() if p.is_dir()]  # beside it: the killed run's lease file
    from pipeline.core.tiling import BlockPlan

    state = json.loads((scene_work / "state.json").read_text())
    plan = BlockPlan.build(state["shape"], state["roi"], state["overlap"], state["block"])
    persisted = {
        b.index
        for b in plan.blocks()
        if (scene_work / "blocks" / ("_".join(map(str, b.index)) + ".npz")).exists()
        or (scene_work / "merged" / "_".join(map(str, b.index))).exists()
    }
    assert 0 < len(persisted) < int(np.prod(plan.grid_shape))
    expected = sum(b.window_count for b in plan.blocks() if b.index not in persisted)
    rerun = subprocess.run([*args, str(out), *opts], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads((out / "s2_report.json").read_text())
    assert report["resumed"] is True
    assert report["windows_computed"] == expected
    assert (out / "s2_labels.tif").read_bytes() == (tmp_path / "clean" / "s2_labels.tif").read_bytes()
    assert not [p for p in out.iterdir() if ".tw-tmp-" in p.name]


def test_overviews_built_from_the_work_store_are_gdals_for_any_block_size(tmp_path, data, bundle_factory):
    """S2 (768 x 1536) halves exactly down to one tile, so its MODE levels are built tile by tile from
    the work store; the COGs are byte-identical across block sizes and their levels are the ones GDAL
    builds itself from the same labels (the streamed path)."""
    from pipeline.formats.cog import write_cog_labels

    src = data / GEO[3][0]
    bundle = bundle_factory(2, 4, ["land", "water"], 64, [8, 16])
    over = {"outputs.probabilities": True, "outputs.keep_work": True}
    runs = [
        _job(tmp_path / str(i), src, bundle, **{"tiling.block_size": block, **over})[0]
        for i, block in enumerate([[128], [192, 320]])
    ]
    assert all(r.status == "ok" for r in runs), [r.reason for r in runs]
    for key in ("labels", "probabilities"):
        assert Path(runs[0].outputs[key]).read_bytes() == Path(runs[1].outputs[key]).read_bytes()
    for i, r in enumerate(runs):
        report = json.loads(Path(r.outputs["report"]).read_text())
        assert report["timings_s"]["overviews_s"] > 0
        assert len(list((tmp_path / str(i) / ".tilewise-work").glob("*/overviews/*/level2.zarr"))) == 2
    out = Path(runs[0].outputs["labels"])
    assert cog_validate(str(out))[0]
    with rasterio.open(out) as ds:
        labels, names = ds.read(1), json.loads(ds.tags()["CLASS_NAMES"])
    streamed = tmp_path / "streamed.tif"
    meta = open_geotiff(str(src)).meta
    write_cog_labels(labels, streamed, meta=meta, class_names=names, class_colors=[(0, 0, 0)] * len(names))
    for level in (0, 1):
        opened = rasterio.open(out, overview_level=level), rasterio.open(streamed, overview_level=level)
        with opened[0] as a, opened[1] as b:
            assert a.shape == b.shape and (a.read(1) == b.read(1)).all()


def test_zarr_probabilities_are_the_work_stores_copied_chunk_by_chunk(tmp_path, data, bundle_factory):
    import zarr

    src = data / "geo/rasterio/RGB.byte.tif"
    bundle = bundle_factory(2, 3, ["a", "b", "c"], 128, [8, 16])
    over = {"outputs.format": "zarr", "outputs.probabilities": True, "outputs.keep_work": True}
    (r,) = _job(tmp_path, src, bundle, **{"tiling.block_size": [256], **over})
    assert r.status == "ok", r.reason
    out = zarr.open_array(store=r.outputs["probabilities"], mode="r")
    (work,) = (tmp_path / ".tilewise-work").glob("*/probs.zarr")
    stored = zarr.open_array(store=str(work), mode="r")
    assert out.shape == stored.shape == (3, 718, 791)
    # the output keeps all classes in a chunk; the store has a chunk per class (what GDAL reads fastest)
    assert out.chunks == (3, 256, 256) and stored.chunks == (1, 256, 256)
    assert np.array_equal(out[...], stored[...]) and out.attrs["class_names"] == ["a", "b", "c"]

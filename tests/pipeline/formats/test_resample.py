"""GSD resampling: the engine sees the bundle's pixel size, outputs stay on the input's grid."""

from __future__ import annotations

import numpy as np
import rasterio
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.enums import Resampling

from pipeline.core.box import Box
from pipeline.formats.geotiff import open_geotiff
from pipeline.formats.resample import NativeView, ResampledGeoScene, needs_resampling
from pipeline.job.config import load_config
from pipeline.job.skeleton import run_job


def test_resampled_reads_match_gdal_whole_scene_resampling(data):
    src = data / "geo/solaris/sample_geotiff.tif"  # 900x900 at 0.5 m
    scene = ResampledGeoScene(open_geotiff(str(src)), (1.0, 1.0))
    assert scene.shape == (1, 450, 450)
    assert scene.meta.transform.a == 1.0 and scene.meta.transform.c == open_geotiff(str(src)).meta.transform.c
    with rasterio.open(src) as ds:
        whole = ds.read(out_shape=(1, 450, 450), resampling=Resampling.average, out_dtype="float32")
    part = scene.read(Box((100, 200), (228, 264)))
    assert np.allclose(part, whole[:, 100:228, 200:264], atol=1e-3)
    padded = scene.read(Box((-5, 440), (5, 460)), fill=-1)
    assert (padded[:, :5] == -1).all() and (padded[:, :, 10:] == -1).all()
    nodata = scene.read_nodata(Box((-5, 0), (5, 450)))
    assert nodata[:5].all()


@settings(max_examples=60, deadline=None)
@given(st.integers(3, 40), st.integers(3, 40), st.integers(5, 90), st.integers(5, 90), st.data())
def test_native_view_is_nearest_by_pixel_centres(h, w, big_h, big_w, draw):
    engine = np.arange(h * w, dtype=np.int32).reshape(h, w)
    view = NativeView(engine, (big_h, big_w))
    rows = np.minimum(((np.arange(big_h) + 0.5) * h / big_h).astype(int), h - 1)
    cols = np.minimum(((np.arange(big_w) + 0.5) * w / big_w).astype(int), w - 1)
    full = engine[np.ix_(rows, cols)]
    assert np.array_equal(view[...], full)
    r0 = draw.draw(st.integers(0, big_h - 1))
    r1 = draw.draw(st.integers(r0, big_h))
    step = draw.draw(st.integers(1, 4))
    assert np.array_equal(view[r0:r1:step], full[r0:r1:step])
    assert np.array_equal(view[r0, ::step], full[r0, ::step])


def test_needs_resampling_tolerance():
    assert not needs_resampling((10.0, 10.0), (10.05, 9.95))
    assert needs_resampling((0.5, 0.5), (1.0, 1.0))
    assert not needs_resampling((0.5, 0.5), None)


def test_job_with_gsd_bundle_writes_on_input_grid(tmp_path, data, bundle_factory):
    src = data / "geo/solaris/sample_geotiff.tif"
    bundle = bundle_factory(2, 1, ["bg", "building"], 64, [4, 8])
    gsd_bundle = tmp_path / "gsd"
    gsd_bundle.mkdir()
    config = yaml.safe_load((bundle / "model.yaml").read_text())
    config["target_spacing"] = [1.0, 1.0]
    (gsd_bundle / "model.yaml").write_text(yaml.safe_dump(config))
    (gsd_bundle / "weights.safetensors").write_bytes((bundle / "weights.safetensors").read_bytes())
    cfg = load_config(
        None,
        {
            "input": str(src),
            "output": str(tmp_path / "o"),
            "model": str(gsd_bundle),
            "outputs.keep_work": True,
        },
    )
    (r,) = run_job(cfg)
    assert r.status == "ok", r.reason
    assert r.report["plan"]["windows_in_grid"] < 150  # computed at 1 m: 450² not 900²
    with rasterio.open(src) as a, rasterio.open(r.outputs["labels"]) as b:
        assert b.shape == a.shape and b.transform == a.transform and b.crs == a.crs
        labels = b.read(1)
    import zarr

    (work,) = (tmp_path / "o" / ".tilewise-work").iterdir()
    engine = zarr.open_array(store=str(work / "labels.zarr"), mode="r")[:]
    assert engine.shape == (450, 450)
    assert np.array_equal(labels, NativeView(engine, (900, 900))[...])

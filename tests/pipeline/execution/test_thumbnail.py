"""The summary canvas the block pass fills (pipeline/execution/thumbnail.py): it equals sampling the
scene and the final labels directly, whatever the block size; class counts equal a count of the label
array; and nothing after the block pass reads the input again."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import rasterio
from PIL import Image

import pipeline.execution.thumbnail as thumbnail
from pipeline.execution.thumbnail import CanvasScene, load_canvas, sample_axes
from pipeline.formats.geotiff import GeoTiffScene, open_geotiff
from pipeline.job.config import load_config
from pipeline.job.skeleton import run_job

RGB = "geo/rasterio/RGB.byte.tif"  # 791x718, uint8, a nodata collar


def _run(out: Path, src: Path, bundle: Path, **over) -> object:
    cfg = load_config(
        None, {"input": str(src), "output": str(out), "model": str(bundle), "outputs.keep_work": True, **over}
    )
    (result,) = run_job(cfg)
    assert result.status == "ok", result.reason
    return result


def _work(out: Path) -> Path:
    (work,) = (out / ".tilewise-work").iterdir()
    return work


def test_sample_axes_cover_the_scene_at_pixel_centres(monkeypatch):
    rows, cols = sample_axes((791, 718))
    assert len(rows) == 791 and (rows == np.arange(791)).all() and (cols == np.arange(718)).all()
    monkeypatch.setattr(thumbnail, "MAX_EDGE_2D", 100)
    rows, cols = sample_axes((791, 718))
    assert (len(rows), len(cols)) == (100, 91) and rows[0] == 3 and rows[-1] == 787
    monkeypatch.setattr(thumbnail, "MAX_VOXELS_3D", 1000)
    axes = sample_axes((197, 233, 189))
    assert all(len(a) <= n for a, n in zip(axes, (197, 233, 189), strict=True))
    assert np.prod([len(a) for a in axes]) <= 1000 * 1.5


@pytest.mark.parametrize("block", [128, 512])
def test_geo_canvas_is_the_scene_and_labels_sampled(tmp_path, data, bundle_factory, monkeypatch, block):
    monkeypatch.setattr(thumbnail, "MAX_EDGE_2D", 200)  # decimate even this small scene
    bundle = bundle_factory(2, 3, ["a", "b", "c"], 64, [4, 8])
    result = _run(tmp_path, data / RGB, bundle, **{"tiling.block_size": [block]})
    scene = open_geotiff(str(data / RGB))
    canvas = load_canvas(_work(tmp_path), scene.spatial_shape, scene.shape[0], scene.dtype)
    assert canvas is not None
    rows, cols = canvas.axes
    with rasterio.open(data / RGB) as src:
        image = src.read()
    with rasterio.open(result.outputs["labels"]) as out:
        labels = out.read(1)
    np.testing.assert_array_equal(canvas.image, image[:, rows][:, :, cols])
    np.testing.assert_array_equal(canvas.labels, labels[np.ix_(rows, cols)])
    np.testing.assert_array_equal(canvas.counts, np.bincount(labels.ravel(), minlength=256))
    report = json.loads(Path(result.outputs["report"]).read_text())
    assert [c["pixels"] for c in report["classes"]] == canvas.counts[:3].tolist()
    assert report["nodata_pixels"] == int((labels == 255).sum()) > 0
    png = np.asarray(Image.open(result.outputs["quicklook"]))
    assert png.shape[:2] == (182, 200)  # 718 rows x 791 columns, longer side 200


def test_nothing_after_the_block_pass_reads_the_input(tmp_path, data, bundle_factory, monkeypatch):
    import pipeline.job.outputs as outputs

    done = {"blocks": False}
    real_write = outputs.write_outputs

    def write_outputs(*args, **kwargs):
        done["blocks"] = True
        return real_write(*args, **kwargs)

    def guard(name):
        real = getattr(GeoTiffScene, name)

        def read(self, *args, **kwargs):
            assert not done["blocks"], f"{name} after the block pass"
            return real(self, *args, **kwargs)

        return read

    for name in ("read", "read_with_nodata", "read_nodata", "read_overview"):
        monkeypatch.setattr(GeoTiffScene, name, guard(name))
    monkeypatch.setattr(outputs, "write_outputs", write_outputs)
    bundle = bundle_factory(2, 3, ["a", "b", "c"], 64, [4, 8])
    result = _run(tmp_path, data / RGB, bundle, **{"tiling.block_size": [256], "outputs.polygons": True})
    assert done["blocks"] and Path(result.outputs["quicklook"]).stat().st_size > 0


def test_volume_canvas_and_its_spacing(tmp_path, data, bundle_factory, monkeypatch):
    monkeypatch.setattr(thumbnail, "MAX_VOXELS_3D", 40**3)
    t1 = data / "medical/totalsegmentator/example_ct_sm.nii.gz"  # 122x101x30, 3 mm
    bundle = bundle_factory(3, 1, ["bg", "gm", "wm"], 32, [4, 8])
    result = _run(tmp_path, t1, bundle, **{"tiling.block_size": [48]})
    from pipeline.formats.nifti_reader import open_nifti

    scene = open_nifti([str(t1)])
    canvas = load_canvas(_work(tmp_path), scene.spatial_shape, scene.shape[0], scene.dtype)
    assert canvas is not None and canvas.image.shape[1:] == canvas.labels.shape
    whole = scene.read(thumbnail.Box.from_shape(scene.spatial_shape))
    np.testing.assert_array_equal(canvas.image, whole[(slice(None), *np.ix_(*canvas.axes))])
    native = np.asarray(nib.load(result.outputs["labels"]).dataobj)
    assert int(canvas.counts[:3].sum() + canvas.counts[255]) == native.size
    small = CanvasScene.of(scene, canvas)
    stretch = [n / len(a) for n, a in zip(scene.spatial_shape, canvas.axes, strict=True)]
    expected = [s * f for s, f in zip(scene.meta.spacing, stretch, strict=True)]
    assert small.meta.spacing == pytest.approx(expected)
    assert Path(result.outputs["quicklook"]).stat().st_size > 0


def test_a_store_without_pieces_gives_no_canvas(tmp_path):
    assert load_canvas(tmp_path, (10, 10), 3, np.uint8) is None

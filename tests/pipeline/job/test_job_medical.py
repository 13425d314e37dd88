"""The one-scene job on real NIfTI volumes: voxel grid, label tables, orientation round trip, OME-Zarr."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from pipeline.formats.nifti_writer import read_ctbl, read_itksnap_labels
from pipeline.job.config import load_config
from pipeline.job.skeleton import run_job

VOLUMES = [
    "medical/totalsegmentator/example_ct_sm.nii.gz",  # RAS, int16 HU
    "medical/totalsegmentator/example_mr_sm.nii.gz",  # LPS
    "medical/nilearn/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",  # RAS, 197x233x189
]
CLASSES = ["background", "tissue", "other"]


def _job(out: Path, src: Path | str, bundle: Path, **over):
    cfg = load_config(None, {"input": str(src), "output": str(out), "model": str(bundle),
                             "outputs.quicklook": False, **over})  # fmt: skip
    return run_job(cfg)


@pytest.mark.parametrize("rel", VOLUMES)
def test_nifti_labels_keep_voxel_grid_and_codes(tmp_path, data, bundle_factory, rel):
    bundle = bundle_factory(3, 1, CLASSES, 32, [4, 8])
    src = data / rel
    (r,) = _job(tmp_path, src, bundle, **{"tiling.block_size": [64]})
    assert r.status == "ok", r.reason
    img, out = nib.load(src), nib.load(r.outputs["labels"])
    assert out.shape == img.shape[:3]
    assert np.array_equal(out.affine, img.affine)
    assert int(out.header["sform_code"]) == int(img.header["sform_code"])
    assert int(out.header["qform_code"]) == int(img.header["qform_code"])
    assert out.header.get_intent()[0] == "label"
    assert out.get_data_dtype() == np.uint8
    labels = np.asarray(out.dataobj)
    assert labels.max() < len(CLASSES)
    stem = Path(r.outputs["labels"]).name.removesuffix(".nii.gz")
    ctbl = read_ctbl(tmp_path / f"{stem}.ctbl")
    assert [ctbl[i][0] for i in range(len(CLASSES))] == CLASSES
    snap = read_itksnap_labels(tmp_path / f"{stem}_itksnap.txt")
    assert snap[1][0] == "tissue"
    report = json.loads(Path(r.outputs["report"]).read_text())
    voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000
    for row in report["classes"]:
        assert row["volume_ml"] == pytest.approx(row["pixels"] * voxel_ml, rel=1e-6)
        assert row["pixels"] == int((labels == row["id"]).sum())


def test_lps_inference_equals_ras_inference_mapped_back(tmp_path, data, bundle_factory):
    bundle = bundle_factory(3, 1, CLASSES, 32, [4, 8])
    lps = data / "medical/totalsegmentator/example_mr_sm.nii.gz"
    img = nib.load(lps)
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    ras = nib.as_closest_canonical(img)
    ras_path = tmp_path / "mr_ras.nii.gz"
    nib.save(ras, ras_path)
    (a,) = _job(tmp_path / "a", lps, bundle)
    (b,) = _job(tmp_path / "b", ras_path, bundle)
    la = np.asarray(nib.load(a.outputs["labels"]).dataobj)
    lb = np.asarray(nib.load(b.outputs["labels"]).dataobj)
    back = apply_orientation(lb, ornt_transform(axcodes2ornt(("R", "A", "S")), io_orientation(img.affine)))
    assert back.shape == la.shape
    assert np.array_equal(back, la)
    assert len(np.unique(la)) > 1  # a real (non-constant) prediction was compared


def test_ome_zarr_output_reads_back(tmp_path, data, bundle_factory):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    bundle = bundle_factory(3, 1, CLASSES, 32, [4, 8])
    src = data / "medical/totalsegmentator/example_ct_sm.nii.gz"
    (z,) = _job(tmp_path / "z", src, bundle, **{"outputs.format": "zarr"})
    (n,) = _job(tmp_path / "n", src, bundle)
    assert z.status == "ok", z.reason
    nodes = list(Reader(parse_url(z.outputs["labels"]))())
    assert nodes, "ome-zarr found no image"
    node = nodes[0]
    level0 = np.asarray(node.data[0])
    assert len(node.data) >= 2  # multiscale
    assert "image-label" in node.metadata or "color" in json.dumps(node.metadata, default=str)
    nifti = np.asarray(nib.load(n.outputs["labels"]).dataobj)  # RAS file: engine axes == file axes
    assert np.array_equal(level0.squeeze(), nifti.transpose(2, 1, 0))


def test_dimension_mismatch_fails_before_compute(tmp_path, data, bundle_factory):
    b2 = bundle_factory(2, 1, CLASSES, 32, [4, 8])
    (r,) = _job(tmp_path, data / "medical/totalsegmentator/example_ct_sm.nii.gz", b2)
    assert r.status == "failed"
    assert "example_ct_sm.nii.gz" in r.reason and "3-D" in r.reason and "2-D" in r.reason
    b3 = bundle_factory(3, 3, CLASSES, 32, [4, 8])
    (r,) = _job(tmp_path / "x", data / "geo/rasterio/rgb-byte-tenth.tif", b3)
    assert r.status == "failed" and "2-D" in r.reason

"""Training data: pairs read by the job's readers, z-score statistics from the training boxes only,
scenes normalised by the bundle's own Preprocessor, and labels made from tissue probability maps."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from models.training import labels_from_probability_maps
from models.training.data import RawPair, load_pairs, prepare_scenes, zscore_stats
from pipeline.core.box import Box
from pipeline.errors import ConfigError, InputError
from pipeline.job.evaluate import IGNORE

from .conftest import train_config


def _pair(raw: np.ndarray, boxes: list[Box], nodata: np.ndarray | None = None) -> RawPair:
    labels = np.zeros(raw.shape[1:], np.uint8)
    return RawPair("p", None, raw, nodata, labels, None, boxes)


def test_zscore_stats_use_valid_training_pixels_only():
    raw = np.zeros((2, 4, 6), np.float32)
    raw[0, :, :3], raw[0, :, 3:] = 1.0, 100.0  # the held-out right half is far off
    raw[1, :, :3] = np.arange(12, dtype=np.float32).reshape(4, 3)
    raw[1, 0, 0] = np.nan  # non-finite: the whole pixel is dropped
    nodata = np.zeros((4, 6), bool)
    nodata[3, :] = True
    mean, std = zscore_stats([_pair(raw, [Box((0, 0), (4, 3))], nodata)])
    kept = raw[1, :3, :3].reshape(-1)[1:]  # rows 0-2, minus the NaN pixel
    assert mean == pytest.approx([1.0, float(kept.mean())])
    assert std == pytest.approx([1.0, float(kept.std())])  # constant channel: std 1, not 0


def test_zscore_stats_need_valid_pixels():
    raw = np.full((1, 2, 2), np.nan, np.float32)
    with pytest.raises(InputError, match="no valid pixels"):
        zscore_stats([_pair(raw, [Box.from_shape((2, 2))])])


def test_load_pairs_checks_counts_and_bands(s2_crop, tmp_path):
    image, labels = s2_crop
    with pytest.raises(ConfigError, match="one labels file per image"):
        load_pairs([str(image)], [], 2, cache=tmp_path)
    with pytest.raises(InputError, match="only 4 bands"):
        load_pairs([str(image)], [str(labels)], 2, cache=tmp_path, band_indexes=[5], label_map="1-7:0,8:1")
    (pair,) = load_pairs(
        [str(image)], [str(labels)], 2, cache=tmp_path, band_indexes=[4, 1], label_map="1-7:0,8:1",
        ignore_value=0, val_region="x>=2/3",
    )  # fmt: skip
    with rasterio.open(image) as ds:
        np.testing.assert_array_equal(pair.raw, ds.read([4, 1]))
    assert pair.val_box is not None and all(b.intersect(pair.val_box).empty for b in pair.train_boxes)
    assert set(np.unique(pair.labels)) <= {0, 1, IGNORE}
    pair.scene.close()


def test_prepared_scenes_are_normalised_by_the_saved_config(s2_crop, tmp_path):
    image, labels = s2_crop
    base = {
        "name": "t",
        "architecture": {"name": "unet", "out_channels": 2, "features": [4, 8]},
        "inputs": {"channels": [], "band_indexes": None},
        "orientation": "RAS",
        "target_spacing": None,
        "overlap": 0.25,
        "classes": [{"name": "land", "color": "#000000"}, {"name": "water", "color": "#0000ff"}],
    }
    config, (scene,) = prepare_scenes(train_config(image, labels, tmp_path / "b"), base)
    norm = config["inputs"]["normalization"]
    with rasterio.open(image) as ds:
        raw = ds.read().astype(np.float64)
    expected = (raw - np.array(norm["mean"])[:, None, None]) / np.array(norm["std"])[:, None, None]
    np.testing.assert_allclose(scene.image, expected, rtol=1e-4, atol=1e-4)
    train_part = scene.image[(slice(None), *scene.train_boxes[0].slices())]
    assert abs(float(train_part.mean())) < 0.5  # statistics come from the training region
    assert config["spatial_dims"] == 2 and config["patch_size"] == [64, 64]
    assert scene.spacing == (10.0, 10.0)


def test_tissue_labels_from_probability_maps(data, tmp_path):
    import nibabel as nib

    nil = data / "medical" / "nilearn"
    gm = nil / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
    wm = nil / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"
    out = labels_from_probability_maps([gm, wm], tmp_path / "labels.nii.gz")
    img, ref = nib.load(out), nib.load(gm)
    assert img.get_data_dtype() == np.uint8 and np.allclose(img.affine, ref.affine)
    lab = np.asarray(img.dataobj)
    g, w = np.asarray(ref.dataobj).astype(int), np.asarray(nib.load(wm).dataobj).astype(int)
    sure_wm = w > 200
    assert set(np.unique(lab)) == {0, 1, 2} and np.all(lab[sure_wm] == 2) and np.all(lab[g > 200] == 1)

"""Training on real data: a short run learns, the bundle records data-derived normalisation, sampling
balances classes, unlabelled pixels are ignored, and labels must sit on the image grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

from models.bundle import load_bundle
from models.training import TrainConfig, labels_from_probability_maps, train
from models.training.losses import DiceCELoss, masked_dice_loss
from models.training.sampling import PatchSampler, TrainScene, training_boxes
from pipeline.errors import InputError
from pipeline.job.evaluate import IGNORE, parse_label_map, parse_region, remap_labels

S2 = "geo/derived/S2A_T33UUU_20170216_L1C_B02-B03-B04-B08_10m.tif"
OSM = "geo/derived/S2A_T33UUU_20170216_osm_landcover_10m.tif"
CROP = Window(128, 256, 384, 384)  # col, row, width, height: a western patch with lakes


def _crop(src: Path, dest: Path) -> Path:
    with rasterio.open(src) as ds:
        profile = ds.profile | {
            "width": CROP.width,
            "height": CROP.height,
            "transform": ds.window_transform(CROP),
            "blockxsize": 128,
            "blockysize": 128,
        }
        data = ds.read(window=CROP)
        descriptions = ds.descriptions
    with rasterio.open(dest, "w", **profile) as out:
        out.write(data)
        for i, name in enumerate(descriptions, 1):
            out.set_band_description(i, name or "")
    return dest


@pytest.fixture(scope="module")
def s2_crop(tmp_path_factory: pytest.TempPathFactory, data: Path) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("s2crop")
    return _crop(data / S2, tmp / "s2.tif"), _crop(data / OSM, tmp / "osm.tif")


def _config(image: Path, labels: Path, out: Path, **over) -> TrainConfig:
    base = dict(
        images=[str(image)],
        labels=[str(labels)],
        out=str(out),
        classes=["land", "water"],
        features=[8, 16],
        channels=["B02", "B03", "B04", "B08"],
        label_map="1-7:0,8:1",
        ignore_value=0,
        val_region="x>=2/3",
        patch_size=[64],
        epochs=2,
        steps_per_epoch=15,
        batch_size=4,
        lr=5e-3,
        progress=False,
        seed=0,
    )
    return TrainConfig(**(base | over))


def test_short_training_learns_and_writes_a_complete_bundle(s2_crop, tmp_path):
    image, labels = s2_crop
    result = train(_config(image, labels, tmp_path / "b", command="pytest"))
    first, last = np.mean(result.losses[:5]), np.mean(result.losses[-5:])
    assert last < 0.9 * first, result.losses

    bundle = load_bundle(tmp_path / "b")
    cfg = bundle.config
    with rasterio.open(image) as ds:
        raw = ds.read().astype(np.float64)
    train_part = raw[:, :, : parse_region("x>=2/3", raw.shape[1:]).start[1]]  # the western two thirds
    norm = cfg.inputs.normalization
    assert norm.kind == "zscore"
    np.testing.assert_allclose(norm.mean, train_part.reshape(4, -1).mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(norm.std, train_part.reshape(4, -1).std(axis=1), rtol=1e-6)
    assert not np.allclose(norm.mean, raw.reshape(4, -1).mean(axis=1), rtol=1e-6)  # held-out not used
    assert cfg.inputs.channels == ["B02", "B03", "B04", "B08"]
    assert [c.name for c in cfg.classes] == ["land", "water"]
    assert cfg.patch_size == [64, 64] and cfg.target_spacing == [10.0, 10.0]
    card = cfg.card
    assert set(card["metrics"]["validation"]) == {"land", "water"}
    assert card["training"]["validation_region"] == "x>=2/3"
    assert card["training"]["seconds"] > 0 and card["training"]["command"] == "pytest"
    assert len(result.validation) == 2 and result.best["epoch"] in (1, 2)


def test_sampler_oversamples_rare_water_and_never_enters_the_held_out_box(data):
    with rasterio.open(data / OSM) as ds:
        labels = remap_labels(ds.read(1), 2, label_map=parse_label_map("1-7:0,8:1"), ignore_value=0)
    val = parse_region("x>=2/3", labels.shape)
    image = np.zeros((1, *labels.shape), np.float32)
    scene = TrainScene("osm", image, labels, training_boxes(labels.shape, val), val)
    sampler = PatchSampler([scene], (64, 64), 2, seed=1, random_fraction=0.1)
    natural = sampler.class_frequencies()[1]
    assert natural < 0.06  # water is rare among labelled pixels
    hits = 0
    for _ in range(2000):
        _, box, centre, _ = sampler.centre()
        hits += labels[centre] == 1
        patch = sampler.patch_box(box, centre)
        assert patch.intersect(val).empty and box.contains(patch)
    assert hits / 2000 > 0.4  # about half the centres, against ~4 % at random


def test_ignored_pixels_do_not_contribute_to_the_loss():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 16, 16, generator=gen, requires_grad=True)
    target = torch.randint(0, 3, (2, 16, 16), generator=gen)
    target[:, :, :8] = IGNORE
    loss = DiceCELoss(ignore_index=IGNORE)
    base = loss(logits, target)
    base.backward()
    assert logits.grad is not None and torch.all(logits.grad[:, :, :, :8] == 0)
    changed = logits.detach().clone()
    changed[:, :, :, :8] = torch.randn(2, 3, 16, 8, generator=gen) * 50
    assert torch.allclose(loss(changed, target), base.detach())
    everything_ignored = torch.full_like(target, IGNORE)
    assert float(loss(logits, everything_ignored).detach()) == 0.0
    assert float(masked_dice_loss(logits, everything_ignored, IGNORE).detach()) == 0.0


def test_labels_off_the_image_grid_are_refused(s2_crop, data, tmp_path):
    image, _ = s2_crop
    with pytest.raises(InputError, match="grid"):
        train(_config(image, data / OSM, tmp_path / "b"))


def test_unmapped_label_values_need_a_label_map(s2_crop, tmp_path):
    image, labels = s2_crop
    with pytest.raises(InputError, match="label map"):
        train(_config(image, labels, tmp_path / "b", label_map=None, ignore_value=0))


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


def test_train_command_writes_a_bundle_that_bundle_info_reads(s2_crop, tmp_path):
    from typer.testing import CliRunner

    from flows.cli.bundle import bundle_app
    from flows.cli.train import app

    image, labels = s2_crop
    out = tmp_path / "cli-bundle"
    args = [
        "train",
        "--images",
        str(image),
        "--labels",
        str(labels),
        "--out",
        str(out),
        "--classes",
        "land,water",
        "--features",
        "8,16",
        "--label-map",
        "1-7:0,8:1",
        "--ignore-value",
        "0",
        "--val-region",
        "x>=2/3",
        "--patch-size",
        "64",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "3",
        "--batch-size",
        "2",
        "--quiet",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    card = load_bundle(out).config.card
    assert card["training"]["command"].startswith("tilewise train")
    assert load_bundle(out).config.inputs.channels == [
        "B02 blue 490nm",
        "B03 green 560nm",
        "B04 red 665nm",
        "B08 NIR 842nm",
    ]
    assert CliRunner().invoke(bundle_app, ["info", str(out)]).exit_code == 0
    again = CliRunner().invoke(app, args)  # refuses to replace without --overwrite
    assert again.exit_code == 2 and "overwrite" in again.output

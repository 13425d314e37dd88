"""Patch sampling: rare classes oversampled, the held-out box never entered, batches shaped for the net."""

from __future__ import annotations

import numpy as np
import rasterio

from models.training.sampling import Augment, PatchSampler, TrainScene, make_batch, training_boxes
from pipeline.core.box import Box
from pipeline.job.evaluate import IGNORE, parse_label_map, parse_region, remap_labels

from .conftest import OSM


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


def test_training_boxes_cover_the_scene_minus_the_held_out_box():
    val = Box((10, 20), (30, 40))
    boxes = training_boxes((50, 60), val)
    assert sum(b.size for b in boxes) == 50 * 60 - val.size
    assert all(b.intersect(val).empty for b in boxes)
    assert all(a.intersect(b).empty for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert training_boxes((50, 60), None) == [Box.from_shape((50, 60))]


def test_batches_keep_labels_aligned_with_the_image_through_augmentation():
    labels = np.zeros((40, 40), np.uint8)
    labels[5:15, 25:35] = 1
    labels[30:, :] = IGNORE
    image = np.stack([labels.astype(np.float32), np.zeros_like(labels, np.float32)])
    scene = TrainScene("s", image, labels, [Box.from_shape((40, 40))])
    sampler = PatchSampler([scene], (16, 16), 2, seed=0)
    augment = Augment(2, intensity=0.0, seed=0)  # flips and rotations only: channel 0 stays the labels
    x, y, drawn = make_batch(sampler, 6, augment)
    assert x.shape == (6, 2, 16, 16) and y.shape == (6, 16, 16) and len(drawn) == 6
    assert str(x.dtype) == "torch.float32" and str(y.dtype) == "torch.int64"
    known = y != IGNORE
    assert bool((x[:, 0][known] == y[known].float()).all())


def test_a_scene_without_labels_is_refused():
    labels = np.full((8, 8), IGNORE, np.uint8)
    scene = TrainScene("s", np.zeros((1, 8, 8), np.float32), labels, [Box.from_shape((8, 8))])
    try:
        PatchSampler([scene], (4, 4), 2)
    except ValueError as exc:
        assert "no labelled pixels" in str(exc)
    else:
        raise AssertionError("a sampler over unlabelled scenes must refuse")

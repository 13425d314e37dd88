"""Class-balanced patches from in-memory training scenes, and MONAI augmentation.

Rare classes decide what a segmentation model is worth (water is 1.2 % of the S2 clip), so a patch
centre is drawn by first picking a class uniformly, then a random labelled pixel of that class.
Patches stay wholly inside the training boxes: the held-out region is never seen, not even as context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.core.box import Box
from pipeline.job.evaluate import IGNORE

MAX_POINTS = 1_000_000  # per class and training box: bounds the index memory on large scenes


@dataclass
class TrainScene:
    """One normalised image ``(C, *spatial)`` with uint8 labels (:data:`IGNORE` = unlabelled)."""

    uri: str
    image: np.ndarray
    labels: np.ndarray
    train_boxes: list[Box]
    val_box: Box | None = None
    spacing: tuple[float, ...] | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.image.shape[1:])


def training_boxes(spatial_shape: Sequence[int], val_box: Box | None) -> list[Box]:
    """The scene minus the held-out box, as disjoint boxes (at most two per axis)."""
    whole = Box.from_shape(tuple(spatial_shape))
    return [whole] if val_box is None else [b for b in whole.difference(val_box) if not b.empty]


class PatchSampler:
    """Draws ``(image, labels)`` patches: class-balanced centres, clamped inside a training box.

    ``random_fraction`` of the centres are drawn uniformly over the training boxes instead, so that the
    model also sees the ordinary mix of the scene (and unlabelled context) at its natural frequency.
    """

    def __init__(
        self,
        scenes: Sequence[TrainScene],
        patch_size: Sequence[int],
        num_classes: int,
        *,
        seed: int = 0,
        random_fraction: float = 0.1,
        max_points: int = MAX_POINTS,
    ) -> None:
        self.scenes = list(scenes)
        self.patch = tuple(int(p) for p in patch_size)
        self.num_classes = int(num_classes)
        self.random_fraction = float(random_fraction)
        self.rng = np.random.default_rng(seed)
        # points[k] = list of (scene index, box, flat indices inside the box) holding class k
        self.points: list[list[tuple[int, Box, np.ndarray]]] = [[] for _ in range(self.num_classes)]
        self.counts = np.zeros(self.num_classes, dtype=np.int64)
        self.boxes: list[tuple[int, Box]] = []
        for si, scene in enumerate(self.scenes):
            for box in scene.train_boxes:
                self.boxes.append((si, box))
                crop = scene.labels[box.slices()].reshape(-1)
                for k in range(self.num_classes):
                    idx = np.flatnonzero(crop == k)
                    if idx.size == 0:
                        continue
                    self.counts[k] += idx.size
                    if idx.size > max_points:
                        idx = np.sort(self.rng.choice(idx, max_points, replace=False))
                    self.points[k].append((si, box, idx))
        self.present = [k for k in range(self.num_classes) if self.counts[k] > 0]
        if not self.present:
            raise ValueError("no labelled pixels in the training region")

    def class_frequencies(self) -> np.ndarray:
        return self.counts / max(1, int(self.counts.sum()))

    def centre(self) -> tuple[int, Box, tuple[int, ...], int]:
        """(scene index, training box, centre pixel, class drawn; -1 for a uniform draw)."""
        if self.rng.random() < self.random_fraction:
            sizes = np.array([b.size for _, b in self.boxes], dtype=np.float64)
            si, box = self.boxes[int(self.rng.choice(len(self.boxes), p=sizes / sizes.sum()))]
            pos = tuple(int(self.rng.integers(a, b)) for a, b in zip(box.start, box.stop, strict=True))
            return si, box, pos, -1
        k = int(self.rng.choice(self.present))
        groups = self.points[k]
        weights = np.array([g[2].size for g in groups], dtype=np.float64)
        si, box, idx = groups[int(self.rng.choice(len(groups), p=weights / weights.sum()))]
        flat = int(idx[int(self.rng.integers(idx.size))])
        local = np.unravel_index(flat, box.shape)
        return si, box, tuple(int(a + o) for a, o in zip(local, box.start, strict=True)), k

    def patch_box(self, box: Box, centre: Sequence[int]) -> Box:
        """The patch around ``centre``, shifted to lie inside ``box`` (or flush with its start)."""
        start = []
        for c, p, lo, hi in zip(centre, self.patch, box.start, box.stop, strict=True):
            s = c - p // 2
            start.append(int(max(lo, min(s, hi - p))) if hi - lo >= p else int(lo))
        return Box.from_shape(self.patch, start)

    def draw(self) -> tuple[np.ndarray, np.ndarray, int]:
        """One ``(C, *patch)`` float32 image, ``(*patch)`` uint8 labels and the class drawn."""
        si, box, centre, k = self.centre()
        scene = self.scenes[si]
        pbox = self.patch_box(box, centre)
        inside = pbox.intersect(box)  # smaller than the patch only when the box is
        img = np.zeros((scene.image.shape[0], *self.patch), np.float32)
        lab = np.full(self.patch, IGNORE, np.uint8)
        img[(slice(None), *inside.slices(pbox.start))] = scene.image[(slice(None), *inside.slices())]
        lab[inside.slices(pbox.start)] = scene.labels[inside.slices()]
        return img, lab, k


class Augment:
    """Random flips, 90° rotations (in-plane, 2-D) and intensity scale/shift, via MONAI transforms.

    Spatial transforms are applied to image and labels with one random draw (dictionary transforms);
    intensity jitter to the image only.
    """

    def __init__(
        self,
        spatial_dims: int,
        *,
        flip_axes: Sequence[int] | None = None,
        rot90: bool | None = None,
        intensity: float = 0.1,
        per_channel: bool = False,
        seed: int = 0,
    ) -> None:
        from monai.transforms import (
            Compose,
            RandFlipd,
            RandRotate90d,
            RandScaleIntensityd,
            RandShiftIntensityd,
        )

        axes = tuple(range(spatial_dims)) if flip_axes is None else tuple(int(a) for a in flip_axes)
        keys = ["image", "label"]
        ops: list[object] = [RandFlipd(keys=keys, prob=0.5, spatial_axis=a) for a in axes]
        if rot90 if rot90 is not None else spatial_dims == 2:
            ops.append(RandRotate90d(keys=keys, prob=0.75, max_k=3, spatial_axes=(0, 1)))
        if intensity > 0:  # per_channel: band ratios shift too (haze, season, scanner), not only brightness
            ops.append(
                RandScaleIntensityd(keys="image", factors=intensity, prob=0.5, channel_wise=per_channel)
            )
            ops.append(
                RandShiftIntensityd(keys="image", offsets=intensity, prob=0.5, channel_wise=per_channel)
            )
        self.transform = Compose(ops)
        self.transform.set_random_state(seed=seed)

    def __call__(self, image: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.transform({"image": torch.from_numpy(image), "label": torch.from_numpy(labels)[None]})
        img, lab = out["image"], out["label"]
        img = img.as_tensor() if hasattr(img, "as_tensor") else img  # MetaTensor -> plain tensor
        lab = lab.as_tensor() if hasattr(lab, "as_tensor") else lab
        return img.contiguous().float(), lab[0].contiguous()


def make_batch(
    sampler: PatchSampler, batch_size: int, augment: Augment | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """``(B, C, *patch)`` float32 inputs, ``(B, *patch)`` int64 targets and the classes drawn."""
    images, labels, drawn = [], [], []
    for _ in range(batch_size):
        img, lab, k = sampler.draw()
        if augment is not None:
            ti, tl = augment(img, lab)
        else:
            ti, tl = torch.from_numpy(img), torch.from_numpy(lab)
        images.append(ti)
        labels.append(tl.long())
        drawn.append(k)
    return torch.stack(images), torch.stack(labels), drawn

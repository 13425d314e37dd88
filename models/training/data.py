"""Training data: scenes read by the pipeline's readers and normalised as inference normalises them.

Training-serving skew is the quiet killer of deployed models, so nothing here has its own I/O or
normalisation: images and labels are opened exactly as a job opens them (same readers, same NIfTI
orientation and spacing), and inputs go through :class:`pipeline.execution.preprocess.Preprocessor`
built from the very bundle config that is saved. The z-score statistics are computed from the training
region of the training scenes only, so the held-out box does not leak into them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.bundle import validate_config
from models.training.config import TrainConfig, finish_config, spacing_of
from models.training.sampling import TrainScene, training_boxes
from pipeline.core.box import Box
from pipeline.errors import ConfigError, InputError
from pipeline.execution.preprocess import Preprocessor
from pipeline.formats.source import SceneSource
from pipeline.job.evaluate import (
    IGNORE,
    check_aligned,
    label_source,
    parse_label_map,
    parse_region,
    remap_labels,
)


def scene_source(uri: str, orientation: str, spacing: Sequence[float] | None, cache: Path) -> SceneSource:
    """The image as the job would open it (NIfTI: the bundle's orientation and target spacing)."""
    from pipeline.job.discover import discover

    found = discover(uri)
    if len(found) != 1:
        raise InputError(f"expected one scene, found {len(found)}", path=uri)
    src = found[0]
    if src.kind != "nifti":
        return src
    options = (("orientation", orientation), ("target_spacing", tuple(spacing) if spacing else None))
    return SceneSource(src.kind, src.uris, (*options, ("cache_dir", str(cache))))


@dataclass
class RawPair:
    """An image read whole (the model's bands, raw values) with its remapped labels and regions."""

    uri: str
    scene: Any
    raw: np.ndarray  # model channels, scene dtype
    nodata: np.ndarray | None
    labels: np.ndarray
    val_box: Box | None
    train_boxes: list[Box]


def load_pairs(
    images: Sequence[str],
    labels: Sequence[str],
    num_classes: int,
    *,
    cache: Path,
    orientation: str = "RAS",
    target_spacing: Sequence[float] | None = None,
    band_indexes: Sequence[int] | None = None,
    label_map: str | Mapping[int, int] | None = None,
    ignore_value: int | None = IGNORE,
    val_region: str | None = None,
) -> list[RawPair]:
    """Open each image/label pair with the pipeline readers, check they share a grid, read them whole.

    Training holds its scenes in memory (inference never does): fine for the training-sized scenes
    this is for, and it makes class-balanced sampling a cheap index lookup.
    """
    if len(images) != len(labels) or not images:
        raise ConfigError(f"give one labels file per image ({len(images)} images, {len(labels)} labels)")
    lmap = parse_label_map(label_map)
    out = []
    for image_uri, label_uri in zip(images, labels, strict=True):
        src = scene_source(str(image_uri), orientation, target_spacing, cache)
        scene = src.open()
        lab_scene = label_source(src, str(label_uri)).open()
        try:
            check_aligned(scene, lab_scene)
            whole = Box.from_shape(scene.shape[1:])
            raw = scene.read(whole)
            if band_indexes:
                if max(band_indexes) > raw.shape[0]:
                    raise InputError(
                        f"band_indexes {band_indexes} but only {raw.shape[0]} bands", path=src.uri
                    )
                raw = raw[[b - 1 for b in band_indexes]]
            nodata = scene.read_nodata(whole)
            labels = remap_labels(
                lab_scene.read(whole, fill=IGNORE)[0],
                num_classes,
                label_map=lmap,
                ignore_value=ignore_value,
                uri=str(label_uri),
            )
        finally:
            lab_scene.close()
        val_box = parse_region(val_region, scene.shape[1:]) if val_region else None
        out.append(
            RawPair(src.uri, scene, raw, nodata, labels, val_box, training_boxes(scene.shape[1:], val_box))
        )
    return out


def zscore_stats(pairs: Sequence[RawPair]) -> tuple[list[float], list[float]]:
    """Per-channel mean/std over valid pixels of the training boxes of all scenes (float64 sums)."""
    channels = pairs[0].raw.shape[0]
    n = np.zeros(channels)
    s1 = np.zeros(channels)
    s2 = np.zeros(channels)
    for p in pairs:
        for box in p.train_boxes:
            x = p.raw[(slice(None), *box.slices())].reshape(channels, -1).astype(np.float64)
            ok = np.isfinite(x).all(axis=0)
            if p.nodata is not None:
                ok &= ~p.nodata[box.slices()].reshape(-1)
            x = x[:, ok]
            n += x.shape[1]
            s1 += x.sum(axis=1)
            s2 += (x * x).sum(axis=1)
    if n[0] == 0:
        raise InputError("no valid pixels in the training region", path=pairs[0].uri)
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean * mean, 0.0))
    std[std < 1e-6] = 1.0  # a constant channel carries no information; avoid dividing by zero
    return [float(v) for v in mean], [float(v) for v in std]


class SelectedScene:
    """A scene stand-in whose channels are already the model's (bands were picked on read)."""

    def __init__(self, raw: RawPair) -> None:
        self.uri = raw.uri
        self.shape = raw.raw.shape
        self.meta = raw.scene.meta
        self._raw = raw

    def read(self, box: Box, fill: float = 0.0) -> np.ndarray:
        return self._raw.raw[(slice(None), *box.slices())]

    def read_nodata(self, box: Box) -> np.ndarray | None:
        return None if self._raw.nodata is None else self._raw.nodata[box.slices()]


def prepare_scenes(cfg: TrainConfig, base: dict[str, Any]) -> tuple[dict[str, Any], list[TrainScene]]:
    """Read the pairs, complete the bundle config from them, and normalise each image with the
    Preprocessor built from that config: the scenes hold exactly what the saved bundle will be fed."""
    num_classes = len(base["classes"])
    with tempfile.TemporaryDirectory(prefix="tilewise-train-") as tmp:
        pairs = load_pairs(
            cfg.images,
            cfg.labels,
            num_classes,
            cache=Path(tmp),
            orientation=base["orientation"],
            target_spacing=base.get("target_spacing"),
            band_indexes=base["inputs"].get("band_indexes"),
            label_map=cfg.label_map,
            ignore_value=cfg.ignore_value,
            val_region=cfg.val_region,
        )
        for p in pairs[1:]:
            if p.raw.shape[0] != pairs[0].raw.shape[0] or p.raw.ndim != pairs[0].raw.ndim:
                raise InputError(f"channels/dims differ from {pairs[0].uri}", path=p.uri)
        config = finish_config(cfg, base, pairs[0].scene, pairs[0].raw.shape[0])
        kind = cfg.normalization if not cfg.bundle_init else base["inputs"]["normalization"]["kind"]
        if kind == "zscore":
            mean, std = zscore_stats(pairs)
            config["inputs"]["normalization"] = {"kind": "zscore", "mean": mean, "std": std}
        elif kind in ("percentile", "none"):
            config["inputs"]["normalization"] = {"kind": kind}
        elif not cfg.bundle_init:
            raise ConfigError(f"normalization must be zscore, percentile or none, got {kind!r}")
        config["inputs"]["band_indexes"] = None  # load_pairs already picked the bands
        draft = validate_config(config)
        scenes = []
        for p in pairs:
            pre = Preprocessor.from_bundle(draft, SelectedScene(p), stats=True)
            image, invalid = pre.apply(p.raw, p.nodata, selected=True)
            labels = p.labels.copy()
            labels[invalid] = IGNORE
            spacing = tuple(spacing_of(p.scene.meta) or ())
            scenes.append(TrainScene(p.uri, image, labels, p.train_boxes, p.val_box, spacing))
            p.scene.close()
    config["inputs"]["band_indexes"] = base["inputs"].get("band_indexes") or cfg.band_indexes
    return config, scenes


def labels_from_probability_maps(
    maps: Sequence[str | Path], out: str | Path, *, scale: float = 255.0
) -> Path:
    """A label NIfTI from tissue probability maps: argmax of (1 - sum, p1, p2, ...), class 0 = the rest.

    The maps are read on their own grid (values ``p * scale``) and the result keeps their affine and
    qform/sform codes, so it overlays the image the maps belong to voxel for voxel.
    """
    import nibabel as nib

    imgs = [nib.load(str(m)) for m in maps]
    first = imgs[0]
    for m, img in zip(maps, imgs, strict=True):
        if img.shape != first.shape or not np.allclose(img.affine, first.affine, atol=1e-4):
            raise InputError("probability maps differ in shape or affine", path=str(m))
    probs = np.stack([np.asarray(img.dataobj, dtype=np.float32) / scale for img in imgs])
    stack = np.concatenate([np.clip(1.0 - probs.sum(axis=0), 0.0, None)[None], probs])
    labels = np.argmax(stack, axis=0).astype(np.uint8)
    header = first.header.copy()
    header.set_data_dtype(np.uint8)
    img = nib.Nifti1Image(labels, first.affine, header)
    img.set_qform(first.affine, code=int(first.header["qform_code"]))
    img.set_sform(first.affine, code=int(first.header["sform_code"]))
    img.header.set_slope_inter(1.0, 0.0)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(out))
    return out

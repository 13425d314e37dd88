"""Score a bundle against reference labels by running the real tiled job, never a shortcut.

A metric computed with a separate in-memory code path would not prove what users get. ``evaluate_bundle``
therefore runs ``run_job`` (the same discovery, preprocessing, block sweep, seam merge and writers as
``tilewise run``) into a temporary folder, reads the written labels back with the format readers, and
compares them with the reference on a region: per-class Dice and IoU from one confusion matrix.

The label helpers (value remapping with an ignore value, region parsing, grid checks) live here because
training uses exactly the same ones: a region or label map means the same thing in both commands.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.box import Box
from pipeline.errors import ConfigError, ExecutionError, InputError
from pipeline.formats.scene import GeoMeta, VolumeMeta
from pipeline.formats.source import SceneSource

IGNORE = 255  # internal label value of unlabelled pixels (uint8 labels, at most 255 classes)
AXES = {2: ("y", "x"), 3: ("x", "y", "z")}  # 2-D scenes are (rows, cols); volumes (X, Y, Z) in RAS
_ALIASES = {2: {"row": 0, "rows": 0, "col": 1, "cols": 1}, 3: {}}
_TERM = re.compile(r"^\s*(?P<axis>[a-z]+\d*)\s*(?P<op>>=|<=|=|>|<)\s*(?P<value>[^\s]+)\s*$")
HELD_OUT = ("val", "held-out", "heldout", "validation")


# ------------------------------------------------------------------------------------- label values
def parse_label_map(text: str | Mapping[int, int] | None) -> dict[int, int] | None:
    """``"1-7:0,8:1"`` -> ``{1: 0, ..., 7: 0, 8: 1}``: raw label values (or inclusive ranges) to class ids."""
    if text is None or isinstance(text, Mapping):
        return None if text is None else {int(k): int(v) for k, v in text.items()}
    out: dict[int, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        m = re.fullmatch(r"(-?\d+)(?:\s*-\s*(-?\d+))?\s*:\s*(\d+)", part)
        if not m:
            raise ConfigError(f"label map entry {part!r} is not VALUE:CLASS or LOW-HIGH:CLASS")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ConfigError(f"label map range {part!r} runs backwards")
        for v in range(lo, hi + 1):
            out[v] = int(m.group(3))
    if not out:
        raise ConfigError(f"empty label map {text!r}")
    return out


def remap_labels(
    raw: np.ndarray,
    num_classes: int,
    *,
    label_map: Mapping[int, int] | None = None,
    ignore_value: int | None = IGNORE,
    uri: str | None = None,
) -> np.ndarray:
    """Raw label values to uint8 class ids with :data:`IGNORE` for unlabelled pixels.

    With a map, unmapped values are unlabelled (partial ground truth is the norm). Without one, values
    must be class ids or ``ignore_value``: anything else is more likely a wrong file than a label.
    """
    raw = np.asarray(raw)
    if raw.dtype.kind == "f":
        raw = np.where(np.isfinite(raw), raw, -1).astype(np.int64)
    out = np.full(raw.shape, IGNORE, dtype=np.uint8)
    if label_map is not None:
        bad = [c for c in set(label_map.values()) if not 0 <= c < num_classes]
        if bad:
            raise ConfigError(
                f"label map targets class ids {sorted(bad)} but there are {num_classes} classes"
            )
        for value, cls in label_map.items():
            out[raw == value] = cls
        if ignore_value is not None and ignore_value not in label_map:
            out[raw == ignore_value] = IGNORE
        return out
    valid = (raw >= 0) & (raw < num_classes)
    if ignore_value is not None:
        valid &= raw != ignore_value
    stray = ~valid & (raw != ignore_value) if ignore_value is not None else ~valid
    if stray.any():
        values = np.unique(raw[stray])[:8].tolist()
        raise InputError(
            f"label values {values} are neither class ids 0..{num_classes - 1} nor the ignore value "
            f"{ignore_value}; pass a label map (e.g. --label-map '1-7:0,8:1')",
            path=uri,
        )
    out[valid] = raw[valid].astype(np.uint8)
    return out


# ------------------------------------------------------------------------------------------ regions
def _bound(value: str, extent: int, term: str) -> int:
    try:
        if value.endswith("%"):
            return round(float(value[:-1]) / 100.0 * extent)
        if "/" in value:
            num, den = value.split("/", 1)
            return round(float(num) / float(den) * extent)
        if "." in value:
            return round(float(value) * extent)
        v = int(value)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"region bound {value!r} in {term!r} is not a number") from None
    return v + extent if v < 0 else v


def parse_region(text: str | None, spatial_shape: Sequence[int]) -> Box:
    """A box from terms like ``x>=2/3`` (eastern third), ``z=80:110`` (a slab) or ``y<50%``.

    Axes are ``y, x`` (rows, cols) for 2-D scenes and ``x, y, z`` for volumes (``axisN`` works for any).
    A bound written ``2/3``, ``0.667`` or ``66.7%`` is a fraction of the extent (rounded to a pixel), an
    integer is a pixel index (negative: from the end). Terms are joined by commas and intersect.
    Empty or None means the whole scene.
    """
    shape = tuple(int(s) for s in spatial_shape)
    start, stop = [0] * len(shape), list(shape)
    if not text or not text.strip():
        return Box.from_shape(shape)
    names = AXES.get(len(shape), ())
    for term in (t for t in text.split(",") if t.strip()):
        m = _TERM.match(term.lower())
        if not m:
            raise ConfigError(f"region term {term!r} is not like 'x>=0.667' or 'z=80:110'")
        name, op, value = m.group("axis"), m.group("op"), m.group("value")
        if name in names:
            axis = names.index(name)
        elif name in _ALIASES.get(len(shape), {}):
            axis = _ALIASES[len(shape)][name]
        elif name.startswith("axis") and name[4:].isdigit() and int(name[4:]) < len(shape):
            axis = int(name[4:])
        else:
            raise ConfigError(
                f"region axis {name!r} unknown for a {len(shape)}-D scene (use {', '.join(names)})"
            )
        n = shape[axis]
        if op == "=":
            lo_text, sep, hi_text = value.partition(":")
            if not sep:
                raise ConfigError(f"region term {term!r}: use AXIS=START:STOP")
            lo = _bound(lo_text, n, term) if lo_text else 0
            hi = _bound(hi_text, n, term) if hi_text else n
        else:
            v = _bound(value, n, term)
            lo, hi = {">=": (v, n), ">": (v + 1, n), "<": (0, v), "<=": (0, v + 1)}[op]
        start[axis], stop[axis] = max(start[axis], lo), min(stop[axis], hi)
    box = Box(tuple(max(0, s) for s in start), tuple(min(n, s) for n, s in zip(shape, stop, strict=True)))
    if box.empty:
        raise ConfigError(f"region {text!r} is empty for a scene of shape {shape}")
    return box


# ---------------------------------------------------------------------------------------- grid checks
def check_aligned(image: Any, labels: Any) -> None:
    """InputError unless ``labels`` is a one-channel scene on exactly ``image``'s pixel grid."""
    if labels.shape[0] != 1:
        raise InputError(f"labels must have one band/channel, found {labels.shape[0]}", path=labels.uri)
    if tuple(labels.shape[1:]) != tuple(image.shape[1:]):
        raise InputError(
            f"labels grid {tuple(labels.shape[1:])} differs from image grid {tuple(image.shape[1:])} "
            f"({image.uri}); resample or rasterise the labels onto the image grid first",
            path=labels.uri,
        )
    a, b = image.meta, labels.meta
    if isinstance(a, GeoMeta) and isinstance(b, GeoMeta):
        if a.crs is not None and b.crs is not None and a.crs != b.crs:
            raise InputError(f"labels CRS differs from the image's ({image.uri})", path=labels.uri)
        if not np.allclose(
            tuple(a.transform)[:6], tuple(b.transform)[:6], rtol=0, atol=1e-6 * max(a.gsd or (1,))
        ):
            raise InputError(f"labels transform differs from the image's ({image.uri})", path=labels.uri)
    if (
        isinstance(a, VolumeMeta)
        and isinstance(b, VolumeMeta)
        and not np.allclose(a.affine, b.affine, atol=1e-3)
    ):
        raise InputError(f"labels affine differs from the image's ({image.uri})", path=labels.uri)


def label_source(image: SceneSource, uri: str) -> SceneSource:
    """How to open a label file so that it lands on the image's engine grid (nearest when resampled)."""
    from pipeline.formats.source import kind_of

    kind = kind_of(uri)
    if kind is None:
        raise InputError("not a known label file type (.tif .nii.gz .zarr ...)", path=uri)
    options = dict(image.options) if kind == image.kind == "nifti" else {}
    if kind == "nifti":
        options["order"] = 0
    return SceneSource(kind, (uri,), tuple(options.items()))


# -------------------------------------------------------------------------------------------- metrics
def confusion(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, K + 1)`` counts of (true class, predicted class); the last column is "no prediction"."""
    keep = truth != IGNORE
    t = truth[keep].astype(np.int64)
    p = pred[keep].astype(np.int64)
    p = np.where((p >= 0) & (p < num_classes), p, num_classes)
    flat = np.bincount(t * (num_classes + 1) + p, minlength=num_classes * (num_classes + 1))
    return flat[: num_classes * (num_classes + 1)].reshape(num_classes, num_classes + 1)


def scores(conf: np.ndarray, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per-class Dice and IoU (NaN when the class is absent from both truth and prediction)."""
    out: dict[str, dict[str, float]] = {}
    for k, name in enumerate(names):
        tp = float(conf[k, k])
        fn = float(conf[k].sum() - tp)
        fp = float(conf[:, k].sum() - tp)
        denom = 2 * tp + fp + fn
        out[name] = {
            "dice": 2 * tp / denom if denom else float("nan"),
            "iou": tp / (tp + fp + fn) if denom else float("nan"),
            "support": float(conf[k].sum()),
            "tp": tp,
            "fp": fp,
            "fn": fn,
        }
    return out


# ----------------------------------------------------------------------------------------- evaluation
@dataclass
class _Pair:
    source: SceneSource
    labels: str


def _pairs(images: Sequence[str | Path], labels: Sequence[str | Path]) -> list[_Pair]:
    from pipeline.job.discover import discover

    if len(images) != len(labels) or not images:
        raise ConfigError(f"give one labels file per image ({len(images)} images, {len(labels)} labels)")
    pairs = []
    for image, label in zip(images, labels, strict=True):
        found = discover(str(image))
        if len(found) != 1:
            raise InputError(f"expected one scene, found {len(found)}", path=str(image))
        pairs.append(_Pair(found[0], str(label)))
    return pairs


def bundle_region(bundle: Any) -> str:
    """The held-out region the bundle was validated on (recorded by training in its card)."""
    text = (bundle.config.card.get("training") or {}).get("validation_region")
    if not text:
        raise ConfigError(
            "the bundle card records no validation_region; give the region", path=str(bundle.path)
        )
    return str(text)


def native_source(source: SceneSource, orientation: str, cache_dir: Path) -> SceneSource:
    """The scene in the engine's orientation but on its own voxel size: outputs are written on the
    file's grid, so that is where predictions and references are compared."""
    if source.kind != "nifti":
        return SceneSource(source.kind, source.uris)
    return SceneSource(
        source.kind, source.uris, (("orientation", orientation), ("cache_dir", str(cache_dir)))
    )


def _read_prediction(path: str, image: SceneSource) -> np.ndarray:
    src = label_source(image, path)
    scene = src.open()
    try:
        return scene.read(Box.from_shape(scene.shape[1:]), fill=IGNORE)[0]
    finally:
        scene.close()


def evaluate_bundle(
    bundle_path: str | Path,
    images: Sequence[str | Path],
    labels: Sequence[str | Path],
    region: str | None = None,
    label_map: str | Mapping[int, int] | None = None,
    *,
    ignore_value: int | None = IGNORE,
    work_dir: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the tiled job on each image and score the written labels on ``region``.

    ``region`` is a :func:`parse_region` string applied to every scene, or ``"val"`` for the held-out
    region recorded in the bundle card. ``overrides`` are dotted job-config keys (e.g.
    ``{"execution.batch_size": 8}``). Returns per-class Dice/IoU pooled over all scenes, and per scene.
    """
    from models.bundle.sources import open_model
    from pipeline.job.config import load_config
    from pipeline.job.skeleton import run_job

    t0 = time.perf_counter()
    bundle = open_model(bundle_path)
    names = bundle.class_names
    k = len(names)
    lmap = parse_label_map(label_map)
    if region is not None and region.strip().lower() in HELD_OUT:
        region = bundle_region(bundle)
    pairs = _pairs(images, labels)
    with tempfile.TemporaryDirectory(prefix="tilewise-eval-", dir=work_dir) as tmp:
        flags: dict[str, Any] = {
            "input": str(pairs[0].source.uri),
            "output": tmp,
            "model": str(bundle.path),
            "outputs.quicklook": False,
            "outputs.overwrite": True,
            **(overrides or {}),
        }
        cfg = load_config(None, flags)
        results = run_job(cfg, sources=[p.source for p in pairs])
        total = np.zeros((k, k + 1), dtype=np.int64)
        per_scene = []
        for pair, result in zip(pairs, results, strict=True):
            if result.status != "ok":
                raise ExecutionError(f"tiled inference failed: {result.reason}", path=pair.source.uri)
            native = native_source(pair.source, bundle.config.orientation, Path(tmp) / "cache")
            pred = _read_prediction(result.outputs["labels"], native)
            image = native.open()
            truth_scene = label_source(native, pair.labels).open()
            try:
                check_aligned(image, truth_scene)
                box = parse_region(region, image.shape[1:])
                raw = truth_scene.read(box, fill=IGNORE)[0]
            finally:
                image.close()
                truth_scene.close()
            if pred.shape != tuple(image.shape[1:]):
                raise ExecutionError(
                    f"written labels {pred.shape} are not on the scene grid", path=pair.source.uri
                )
            truth = remap_labels(raw, k, label_map=lmap, ignore_value=ignore_value, uri=pair.labels)
            conf = confusion(pred[box.slices()], truth, k)
            total += conf
            per_scene.append(
                {
                    "image": pair.source.uri,
                    "labels": pair.labels,
                    "region": [list(box.start), list(box.stop)],
                    "windows": result.windows,
                    "seconds": result.seconds,
                    "per_class": scores(conf, names),
                }
            )
    per_class = scores(total, names)
    labelled = int(total.sum())
    return {
        "bundle": bundle.config.name,
        "bundle_hash": bundle.hash,
        "region": region or "",
        "label_map": lmap,
        "per_class": per_class,
        "pixel_accuracy": float(np.trace(total[:, :k]) / labelled) if labelled else float("nan"),
        "labelled_pixels": labelled,
        "scenes": per_scene,
        "seconds": round(time.perf_counter() - t0, 2),
    }

"""An nnU-Net v2 model folder as a tilewise :class:`Bundle`: its plans become ``model.yaml`` fields.

What nnU-Net does to a case, and where it lives here:

- channels and labels come from ``dataset.json`` (the label table of every output);
- SimpleITK's reversed axes and ``transpose_forward`` become the net's own axis permutation, with the
  scene read in the file's own voxel axes (``orientation: native``), never reoriented;
- the crop to the box of non-zero voxels is ``crop_nonzero`` (found in a streaming pass, labels padded
  back with background);
- the CT scheme (clip to the foreground 0.5/99.5 percentiles, then z-score with the foreground mean
  and std) is ``clip_zscore``; ``ZScoreNormalization`` is ``scene_zscore`` (the cropped case's own
  mean/std, over the non-zero mask with ``use_mask_for_norm``), ``RescaleTo01Normalization`` is
  ``scene_rescale``, ``RGBTo01Normalization`` is ``scale`` by 1/255, ``NoNormalization`` is ``none``;
  per-case statistics come from an exact pass over the case's own voxels before the block pass;
- the configuration's spacing is the bundle's ``target_spacing`` (a 2-D configuration's is in-plane:
  the slice axis keeps the case's own spacing, ``None``), resampled with nnU-Net's own rules;
- the window grid and gaussian are nnU-Net's (``grid: nnunet``, ``blend: nnunet``), the step
  ``tile_step_size`` (overlap ``1 - step``), logits blended so that labels are the argmax of nnU-Net's
  blended logits (resampled back first, where the case was resampled), and probabilities their
  softmax (``activation_stage: inverted``: after that resampling, as nnU-Net's export); the folds and
  mirroring run inside :class:`NnUNetNet`.

What is not yet faithful is refused with a message that says so, rather than run differently.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from models.bundle.load import Bundle, _Contents
from models.bundle.nnunet.checkpoint import load_checkpoint, network_weights
from models.bundle.nnunet.folder import NnUNetFolder, read_folder
from models.bundle.schema import BundleConfig, default_color, validate_config
from models.bundle.shapes import check_shapes, tensor_shapes
from models.nets.nnunet import NnUNetNet
from pipeline.errors import BundleError

OPTIONS = ("folds", "checkpoint", "mirroring", "step", "accumulate")


def _channels(folder: NnUNetFolder) -> list[str]:
    names = folder.dataset.get("channel_names") or folder.dataset.get("modality")
    if not isinstance(names, dict) or not names:
        raise BundleError("dataset.json has no channel_names", path=str(folder.path / "dataset.json"))
    return [str(names[k]) for k in sorted(names, key=int)]


def _classes(folder: NnUNetFolder) -> list[str]:
    where = str(folder.path / "dataset.json")
    labels = folder.dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise BundleError("dataset.json has no labels", path=where)
    if any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values()) or folder.dataset.get(
        "regions_class_order"
    ):
        raise BundleError("region-based nnU-Net models (sigmoid regions) are not supported yet", path=where)
    by_value = {}
    for name, value in labels.items():
        if name == "ignore":  # nnU-Net's ignore label is never predicted
            continue
        v = value[0] if isinstance(value, (list, tuple)) else value
        by_value[int(v)] = str(name)
    if sorted(by_value) != list(range(len(by_value))):
        raise BundleError(f"labels must be 0..K-1, found {sorted(by_value)}", path=where)
    return [by_value[i] for i in range(len(by_value))]


def _normalization(folder: NnUNetFolder, channels: int) -> dict[str, Any]:
    """nnU-Net's per-channel schemes: one tilewise normalisation when every channel uses the same,
    else ``per_channel`` (e.g. CT and z-score), each channel normalised as nnU-Net normalises it."""
    where = str(folder.plans_path)
    schemes = folder.configuration.get("normalization_schemes") or []
    masks = folder.configuration.get("use_mask_for_norm") or [False] * len(schemes)
    if len(schemes) != channels or len(masks) != channels:
        raise BundleError(
            f"plans list {len(schemes)} normalisation schemes ({len(masks)} use_mask_for_norm) for "
            f"{channels} channels",
            path=where,
        )
    if len(set(schemes)) == 1 and len({bool(m) for m in masks}) == 1:
        return _scheme(folder, schemes[0], bool(masks[0]), list(range(channels)))
    pairs = enumerate(zip(schemes, masks, strict=True))
    return {"kind": "per_channel", "per_channel": [_scheme(folder, k, bool(m), [c]) for c, (k, m) in pairs]}


def _scheme(folder: NnUNetFolder, kind: str, mask: bool, channels: list[int]) -> dict[str, Any]:
    """One nnU-Net scheme over the given channels (CT's foreground properties are per channel)."""
    where = str(folder.plans_path)
    if kind == "NoNormalization":
        return {"kind": "none"}
    if kind == "ZScoreNormalization":  # each case's own mean/std, over nnU-Net's non-zero mask if asked
        return {"kind": "scene_zscore", "nonzero": mask, "nonzero_mask": "any", "native_stats": True}
    if kind == "RescaleTo01Normalization":
        return {"kind": "scene_rescale", "native_stats": True}
    if kind == "RGBTo01Normalization":
        return {"kind": "scale", "factor": 1.0 / 255.0}
    if kind == "CTNormalization":
        props = folder.plans.get("foreground_intensity_properties_per_channel") or {}
        try:
            per = [props[str(c)] for c in channels]
            return {
                "kind": "clip_zscore",
                "mean": [float(p["mean"]) for p in per],
                "std": [max(float(p["std"]), 1e-8) for p in per],
                "clip_lower": [float(p["percentile_00_5"]) for p in per],
                "clip_upper": [float(p["percentile_99_5"]) for p in per],
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"foreground intensity properties are incomplete: {exc}", path=where) from exc
    raise BundleError(
        f"normalisation {kind} is not supported (CTNormalization, ZScoreNormalization, "
        "RescaleTo01Normalization, RGBTo01Normalization and NoNormalization are)",
        path=where,
    )


def _resampling(folder: NnUNetFolder) -> dict[str, Any]:
    """The configuration's ``resampling_fn_data_kwargs``/``resampling_fn_probabilities_kwargs``; other
    resampling functions than nnU-Net's default are refused."""
    cfg, where = folder.configuration, str(folder.plans_path)
    out: dict[str, Any] = {}
    for fn, prefix in (("resampling_fn_data", ""), ("resampling_fn_probabilities", "score_")):
        name = cfg.get(fn, "resample_data_or_seg_to_shape")
        if name != "resample_data_or_seg_to_shape":
            raise BundleError(
                f"{fn} {name!r} is not supported (resample_data_or_seg_to_shape is)", path=where
            )
        kwargs = cfg.get(f"{fn}_kwargs") or {}
        for key in ("order", "order_z", "force_separate_z"):
            if key in kwargs:
                out[prefix + key] = kwargs[key]
    return out


def _check_checkpoint(folder: NnUNetFolder, ckpt: dict[str, Any], path: Path) -> None:
    init = ckpt.get("init_args")
    made_for = init.get("configuration") if isinstance(init, dict) else None
    if made_for is not None and made_for != folder.configuration_name:
        raise BundleError(
            f"checkpoint was trained for configuration {made_for!r}, this folder is "
            f"{folder.configuration_name!r}",
            path=str(path),
        )


def bundle_config(folder: NnUNetFolder, options: Mapping[str, Any], mirror_axes: list[int]) -> BundleConfig:
    """The ``model.yaml`` content of an nnU-Net folder with the chosen folds and settings."""
    cfg, plans = folder.configuration, folder.plans
    channels, classes = _channels(folder), _classes(folder)
    arch = cfg.get("architecture")
    if not isinstance(arch, dict) or "network_class_name" not in arch:
        raise BundleError("configuration has no architecture.network_class_name (nnU-Net v2.4+ plans)",
                          path=str(folder.plans_path))  # fmt: skip
    tf = [int(a) for a in plans.get("transpose_forward", [0, 1, 2])]
    patch = [int(p) for p in cfg["patch_size"]]
    slice_axis = 0 if len(patch) == 2 else None
    patch3 = [1, *patch] if slice_axis is not None else patch
    if len(patch3) != 3 or sorted(tf) != [0, 1, 2]:
        raise BundleError(f"patch {patch} / transpose_forward {tf} do not describe a 3-D volume",
                          path=str(folder.plans_path))  # fmt: skip
    axes = [2 - t for t in tf]  # network axis i is SimpleITK axis tf[i], i.e. voxel axis 2 - tf[i]
    # a 2-D configuration's spacing is in-plane: the case keeps its own between slices (None), as
    # DefaultPreprocessor prepends the case's spacing along the slice axis
    spacing3 = [None, *cfg["spacing"]] if slice_axis is not None else list(cfg["spacing"])
    if len(spacing3) != 3:
        raise BundleError(
            f"spacing {cfg['spacing']} does not match patch {patch}", path=str(folder.plans_path)
        )
    patch_scene = [0, 0, 0]
    spacing_scene: list[float | None] = [0.0, 0.0, 0.0]
    for i, a in enumerate(axes):
        patch_scene[a] = patch3[i]
        spacing_scene[a] = None if spacing3[i] is None else float(spacing3[i])
    step = float(options.get("step") or 0.5)
    if not 0 < step <= 1:
        raise BundleError(f"step must be in (0, 1], not {step}")
    accumulate = str(options.get("accumulate") or "nnunet")
    if accumulate not in ("nnunet", "float32"):
        raise BundleError(f"accumulate must be nnunet or float32, not {accumulate!r}")
    architecture = {
        "name": "nnunet",
        "network_class_name": arch["network_class_name"],
        "arch_kwargs": arch.get("arch_kwargs", {}),
        "kw_requires_import": list(arch.get("_kw_requires_import", [])),
        "in_channels": len(channels),
        "out_channels": len(classes),
        "folds": len(folder.checkpoints),
        "axes": axes,
        "slice_axis": slice_axis,
        "mirror_axes": mirror_axes,
        "spatial_dims": 3,
        "separate_folds": accumulate == "nnunet" and len(folder.checkpoints) > 1,
    }
    name = f"{folder.path.parent.name or 'nnunet'}-{folder.configuration_name}"
    return validate_config(
        {
            "name": name,
            "architecture": architecture,
            "spatial_dims": 3,
            "inputs": {
                "channels": channels,
                "normalization": _normalization(folder, len(channels)),
                "crop_nonzero": True,  # nnU-Net's DefaultPreprocessor crops every case
            },
            "orientation": "native",
            "target_spacing": spacing_scene,
            "resampling": {
                **_resampling(folder),
                "score_dtype": "float16" if accumulate == "nnunet" else "float32",
            },
            "invert": "scores",  # labels: the argmax of the logits resampled back, as nnU-Net's export
            "patch_size": patch_scene,
            "overlap": 1.0 - step,
            "output_activation": "softmax",  # for --probabilities, of the logits once resampled back
            "activation_stage": "inverted",  # as nnU-Net's export (of the blended logits if not resampled)
            "grid": "nnunet",
            "blend": "nnunet",
            "accumulate": accumulate,
            # nnU-Net runs one window per forward pass; a batch of several rounds each window's logits
            # differently in float32, which its float16 sums then occasionally carry into a logit
            "batch_size": 1 if accumulate == "nnunet" else None,
            "classes": [{"name": c, "color": default_color(i)} for i, c in enumerate(classes)],
            "card": {
                "description": f"nnU-Net v2 model {folder.path.parent.name}/{folder.path.name}",
                "nnunet": {
                    "configuration": folder.configuration_name,
                    "folds": [str(f) for f in folder.checkpoints],
                    "checkpoint": Path(next(iter(folder.checkpoints.values()))).name,
                    "mirror_axes": mirror_axes,
                    "tile_step_size": step,
                },
            },
        },
        path=str(folder.path),
    )


class NnUNetBundle(Bundle):
    """A Bundle read from an nnU-Net v2 trained-model folder (``bundle info`` says so)."""

    kind = "nnunet"


def load_nnunet(
    path: Path, *, trust_pickle: bool = False, options: Mapping[str, Any] | None = None
) -> Bundle:
    """The folder as a Bundle; weights read once (``weights_only`` with an allow-list) and kept."""
    opts = {k: v for k, v in dict(options or {}).items() if v is not None}
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise BundleError(f"{', '.join(unknown)} do not apply to an nnU-Net model folder", path=str(path))
    folder = read_folder(path, folds=opts.get("folds"), checkpoint=opts.get("checkpoint") or "final")
    digest = hashlib.sha256()
    for f in ("dataset.json", "plans.json"):
        digest.update((path / f).read_bytes())
    state: dict[str, torch.Tensor] = {}
    mirror: list[int] | None = None
    per_fold: list[tuple[Path, dict[str, torch.Tensor]]] = []
    for i, ckpt_path in enumerate(folder.checkpoints.values()):
        ckpt, sha = load_checkpoint(ckpt_path, trust_pickle=trust_pickle)
        digest.update(sha.encode())
        _check_checkpoint(folder, ckpt, ckpt_path)
        if mirror is None:
            axes = ckpt.get("inference_allowed_mirroring_axes")
            mirror = [int(a) for a in axes] if axes else []
        weights = network_weights(ckpt)
        per_fold.append((ckpt_path, weights))
        state.update({f"folds.{i}.{k}": v for k, v in weights.items()})
    mirror_axes = (mirror or []) if opts.get("mirroring", True) else []
    config = bundle_config(folder, opts, mirror_axes)
    digest.update(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode())
    _check_weights(config, per_fold)
    contents = _Contents(digest.hexdigest(), state, None, None)
    return NnUNetBundle(path, config, per_fold[0][0], trust_pickle=trust_pickle, contents=contents)


def _check_weights(config: BundleConfig, per_fold: list[tuple[Path, dict[str, torch.Tensor]]]) -> None:
    """Each checkpoint against the network the plans describe, naming the checkpoint that does not fit."""
    kwargs = {k: v for k, v in config.architecture.items() if k != "name"}
    with torch.device("meta"):
        net = NnUNetNet(**{**kwargs, "folds": 1}).folds[0]
    expected = tensor_shapes(net.state_dict())
    for path, weights in per_fold:
        check_shapes(expected, tensor_shapes(weights), str(path))

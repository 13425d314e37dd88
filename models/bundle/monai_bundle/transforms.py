"""A MONAI bundle's transforms and inferer, mapped onto tilewise's block-wise equivalents.

tilewise reads, reorients, resamples and normalises scenes block by block, so a bundle's
preprocessing must be a chain it can express: the transforms in ``PREPROCESSING`` each map onto a
field of the bundle schema. Anything else (a crop, a custom ``Lambdad``) would silently change what
the model sees, so it is refused, naming the transform and listing what is supported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.errors import BundleError

PREPROCESSING = (
    "LoadImaged",
    "EnsureChannelFirstd",
    "Orientationd",
    "Spacingd",
    "ScaleIntensityRanged",
    "NormalizeIntensityd",
    "EnsureTyped",
)
# Invertd and SaveImaged: tilewise maps labels back onto the input's grid and writes them itself
POSTPROCESSING = (
    "Activationsd",
    "AsDiscreted",
    "KeepLargestConnectedComponentd",
    "Invertd",
    "SaveImaged",
    "EnsureTyped",
)
INFERERS = ("SlidingWindowInferer",)
LINEAR_MODES = ("bilinear", "linear", "trilinear", 1)


def target_name(spec: Mapping[str, Any], where: str) -> str:
    """``ScaleIntensityRanged`` from ``monai.transforms.ScaleIntensityRanged`` (MONAI names only)."""
    target = spec.get("_target_")
    if not isinstance(target, str):
        raise BundleError(f"{where} has no _target_ class name")
    module, _, name = target.rpartition(".")
    if module and not module.startswith("monai."):
        raise BundleError(f"{where}: {target!r} is not a MONAI class")
    return name


def transform_list(cfg: Any, id: str, used: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """(name, arguments) of each enabled transform of the ``Compose`` (or list) at ``id``.

    Names come from the raw config; only the transforms in ``used`` are resolved (references followed,
    no code run), so a ``SaveImaged`` whose ``output_dir`` is an expression costs nothing; the others'
    arguments are as written.
    """
    raw, base = cfg.raw(id), id
    if isinstance(raw, Mapping) and target_name(raw, id) == "Compose":
        raw, base = raw.get("transforms", []), f"{id}#transforms"
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raw = cfg.get(base)  # a reference or an expression: resolved as a whole
        base = ""
    out = []
    for i, spec in enumerate(raw):
        if not isinstance(spec, Mapping):
            raise BundleError(f"{id}#{i} is not a transform")
        if spec.get("_disabled_") in (True, "true", "True"):
            continue
        name = target_name(spec, f"{id}#{i}")
        if name in used and base:
            spec = cfg.get(f"{base}#{i}")
        args = {k: v for k, v in spec.items() if not k.startswith("_")}  # unresolved unless used
        out.append((name, args))
    return out


def _refuse(name: str, where: str, supported: Sequence[str]) -> BundleError:
    return BundleError(
        f"{where} uses {name}, which tilewise cannot apply block-wise; supported: {', '.join(supported)}"
    )


def _floats(value: Any, n: int, what: str) -> list[float]:
    values = [value] * n if isinstance(value, (int, float)) else list(value)
    if len(values) != n or not all(isinstance(v, (int, float)) for v in values):
        raise BundleError(f"{what} must be {n} numbers, got {value!r}")
    return [float(v) for v in values]


def _intensity(name: str, args: dict[str, Any], channels: int, where: str) -> dict[str, Any]:
    """ScaleIntensityRanged / NormalizeIntensityd as a tilewise normalisation."""
    if name == "ScaleIntensityRanged":
        a_min, a_max = float(args["a_min"]), float(args["a_max"])
        b_min, b_max = args.get("b_min"), args.get("b_max")
        if a_max == a_min:
            raise BundleError(f"{where}: ScaleIntensityRanged needs a_min != a_max")
        if args.get("clip", False):
            if b_min is None or b_max is None or float(b_max) <= float(b_min) or a_max < a_min:
                raise BundleError(
                    f"{where}: ScaleIntensityRanged with clip needs a_min < a_max, b_min < b_max"
                )
            return {
                "kind": "ct_window",
                "center": (a_min + a_max) / 2,
                "width": a_max - a_min,
                "out_min": float(b_min),
                "out_max": float(b_max),
            }
        factor = 1.0 / (a_max - a_min)
        offset = -a_min * factor
        if b_min is not None and b_max is not None:
            factor, offset = factor * (float(b_max) - float(b_min)), offset * (float(b_max) - float(b_min))
            offset += float(b_min)
        return {"kind": "scale", "factor": factor, "offset": offset}
    sub, div = args.get("subtrahend"), args.get("divisor")
    nonzero, channel_wise = bool(args.get("nonzero", False)), bool(args.get("channel_wise", False))
    if sub is None and div is None:
        return {"kind": "scene_zscore", "nonzero": nonzero, "channel_wise": channel_wise}
    if sub is None or div is None or nonzero:
        raise BundleError(
            f"{where}: NormalizeIntensityd needs both subtrahend and divisor (and nonzero "
            "false), or neither (statistics of each scene)"
        )
    return {
        "kind": "zscore",
        "mean": _floats(sub, channels, "subtrahend"),
        "std": _floats(div, channels, "divisor"),
    }


def preprocessing(cfg: Any, dims: int, channels: int) -> dict[str, Any]:
    """Orientation, target spacing and normalisation from the ``preprocessing`` transforms."""
    out: dict[str, Any] = {}
    used = ("Orientationd", "Spacingd", "ScaleIntensityRanged", "NormalizeIntensityd")
    for i, (name, args) in enumerate(transform_list(cfg, "preprocessing", used)):
        where = f"preprocessing#{i} ({name})"
        if name not in PREPROCESSING:
            raise _refuse(name, f"preprocessing#{i}", PREPROCESSING)
        if name == "Orientationd" and args.get("axcodes"):
            out["orientation"] = str(args["axcodes"])
        elif name == "Spacingd":
            mode = args.get("mode", "bilinear")
            mode = mode[0] if isinstance(mode, (list, tuple)) else mode
            if mode not in LINEAR_MODES:
                raise BundleError(f"{where}: mode {mode!r}; tilewise resamples images linearly (bilinear)")
            spacing = _floats(args["pixdim"], dims, "Spacingd pixdim")
            if any(s <= 0 for s in spacing):
                raise BundleError(f"{where}: pixdim must be positive, got {spacing}")
            out["target_spacing"] = spacing
            out["spacing_grid"] = "monai"
            padding = args.get("padding_mode", "border")
            padding = padding[0] if isinstance(padding, (list, tuple)) else padding
            if args.get("scale_extent") or padding not in ("border", None):
                raise BundleError(
                    f"{where}: tilewise lays out MONAI's grid with scale_extent false and border padding"
                )
        elif name in ("ScaleIntensityRanged", "NormalizeIntensityd"):
            if "normalization" in out:
                raise BundleError(f"{where}: a second intensity transform; tilewise applies one")
            out["normalization"] = _intensity(name, args, channels, where)
    return out


def inferer(value: Any, dims: int) -> dict[str, Any]:
    """Patch, overlap, blend, sigma and batch size from a ``SlidingWindowInferer``."""
    if not isinstance(value, Mapping):
        raise BundleError("inferer must be a SlidingWindowInferer")
    name = target_name(value, "inferer")
    if name not in INFERERS:
        raise BundleError(
            f"inferer is {name}; tilewise runs a sliding window: supported: {', '.join(INFERERS)}"
        )
    roi = value.get("roi_size")
    roi = [roi] * dims if isinstance(roi, int) else roi
    if (
        not isinstance(roi, Sequence)
        or len(roi) != dims
        or not all(isinstance(r, int) and r > 0 for r in roi)
    ):
        raise BundleError(f"inferer roi_size must be {dims} positive integers, got {value.get('roi_size')!r}")
    mode = value.get("mode", "constant")
    if mode not in ("constant", "gaussian"):
        raise BundleError(f"inferer mode {mode!r}; supported: constant, gaussian")
    sigma = value.get("sigma_scale", 0.125)
    if not isinstance(sigma, (int, float)):
        raise BundleError(f"inferer sigma_scale must be one number, got {sigma!r}")
    if value.get("padding_mode", "constant") != "constant" or value.get("cval", 0) != 0:
        raise BundleError("inferer padding must be constant 0 (padding_mode, cval)")
    return {
        "patch_size": list(roi),
        "overlap": float(value.get("overlap", 0.25)),
        "blend": mode,
        "sigma_scale": float(sigma),
        "batch_size": int(value.get("sw_batch_size", 1)),
    }


def postprocessing(cfg: Any) -> dict[str, Any]:
    """Activation (run on the blended scores, as MONAI does), how labels return to the input's grid
    (``Invertd`` with ``nearest_interp`` false before ``AsDiscreted``: scores interpolated, then the
    argmax) and label clean-up."""
    out: dict[str, Any] = {"output_activation": "none", "activation_stage": "blended"}
    used = ("Activationsd", "AsDiscreted", "KeepLargestConnectedComponentd")
    discrete = False  # labels made (AsDiscreted) by this point
    inverted = False  # scores interpolated back (Invertd, not nearest) by this point
    for i, (name, args) in enumerate(transform_list(cfg, "postprocessing", used)):
        where = f"postprocessing#{i} ({name})"
        if name not in POSTPROCESSING:
            raise _refuse(name, f"postprocessing#{i}", POSTPROCESSING)
        discrete = discrete or name == "AsDiscreted"
        if name == "Activationsd":
            if args.get("other") is not None:
                raise BundleError(f"{where}: a custom activation ('other') is not supported")
            if args.get("softmax") and args.get("sigmoid"):
                raise BundleError(f"{where}: both softmax and sigmoid")
            out["output_activation"] = (
                "softmax" if args.get("softmax") else "sigmoid" if args.get("sigmoid") else "none"
            )
            if inverted:  # MONAI interpolates the logits, then activates them on the scan's grid
                out["activation_stage"] = "inverted"
        elif name == "Invertd":
            nearest = args.get("nearest_interp", True)
            if not isinstance(nearest, bool):
                raise BundleError(f"{where}: nearest_interp must be true or false, got {nearest!r}")
            if not nearest and not discrete:  # MONAI interpolates the scores, then takes the argmax
                out["invert"] = "scores"
                inverted = True
        elif name == "AsDiscreted" and not args.get("argmax") and args.get("threshold") is not None:
            raise BundleError(f"{where}: only argmax labels are supported (threshold is not)")
        elif name == "KeepLargestConnectedComponentd":
            if args.get("is_onehot"):
                raise BundleError(f"{where}: is_onehot is not supported; tilewise keeps components of labels")
            labels = args.get("applied_labels")
            out["postprocess"] = {
                "keep_largest": True,
                "applied_labels": [labels] if isinstance(labels, int) else labels,
                "independent": bool(args.get("independent", True)),
                "connectivity": args.get("connectivity"),
                "num_components": int(args.get("num_components", 1)),
            }
    return out

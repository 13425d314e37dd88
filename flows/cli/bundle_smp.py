"""``tilewise bundle import smp|torchgeo``: remote-sensing models, converted once to tilewise bundles.

An smp folder or a TorchGeo checkpoint says what network it is, never which bands it reads, how they
are scaled or what its classes are: those come from ``--spec FILE.yaml`` (docs/models.md) and the
options here, which override the file. The result is model.yaml + weights.safetensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from flows.cli.bundle_io import Overwrite, TrustPickle
from flows.cli.errors import reported
from flows.cli.options import int_list
from pipeline.errors import OutputError

Spec = Annotated[
    Path | None, typer.Option("--spec", help="YAML: channels, band_indexes, normalization, classes, ...")
]
Bands = Annotated[str | None, typer.Option("--bands", help="Input channel names, e.g. B02,B03,B04,B08.")]
BandIndexes = Annotated[str | None, typer.Option("--band-indexes", help="1-based scene bands, e.g. 2,3,4,8.")]
Mean = Annotated[str | None, typer.Option("--mean", help="Per-band mean (z-score with --std).")]
Std = Annotated[str | None, typer.Option("--std", help="Per-band standard deviation.")]
Scale = Annotated[float | None, typer.Option("--scale", help="Multiply raw values, e.g. 0.0001.")]
Classes = Annotated[str | None, typer.Option("--classes", help="Class names, comma-separated.")]
Patch = Annotated[int | None, typer.Option("--patch-size", min=1, help="Window edge (default 256).")]
Gsd = Annotated[float | None, typer.Option("--gsd", help="Metres per pixel the model was trained at.")]
Out = Annotated[Path, typer.Option("--out", help="tilewise bundle folder to write.")]


def _floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise typer.BadParameter(
            f"expected comma-separated numbers, got {text!r}", param_hint=option
        ) from None


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [v.strip() for v in text.split(",") if v.strip()]


def spec_from(spec: Path | None, **given: Any) -> dict[str, Any]:
    """The spec file's keys, overridden by the options given."""
    from models.bundle.smp.spec import read_spec

    data = read_spec(spec) if spec is not None else {}
    mean, std, scale = given.pop("mean"), given.pop("std"), given.pop("scale")
    if (mean is None) != (std is None):
        raise typer.BadParameter("give --mean and --std together", param_hint="--mean/--std")
    if mean is not None and scale is not None:
        raise typer.BadParameter("give --mean/--std or --scale, not both", param_hint="--scale")
    if mean is not None:
        data["normalization"] = {"kind": "zscore", "mean": mean, "std": std}
    elif scale is not None:
        data["normalization"] = {"kind": "scale", "factor": scale}
    data.update({k: v for k, v in given.items() if v is not None})
    return data


def _description(
    spec: Path | None,
    bands: str | None,
    band_indexes: str | None,
    mean: str | None,
    std: str | None,
    scale: float | None,
    classes: str | None,
    patch_size: int | None,
    gsd: float | None,
) -> dict[str, Any]:
    """What both imports need to know beyond the weights: the spec file, overridden by the options."""
    return spec_from(
        spec,
        channels=_names(bands),
        band_indexes=int_list(band_indexes, "--band-indexes", positive=True),
        mean=_floats(mean, "--mean"),
        std=_floats(std, "--std"),
        scale=scale,
        classes=_names(classes),
        patch_size=patch_size,
        gsd=gsd,
    )


def _report(bundle: Any) -> None:
    arch = bundle.config.architecture
    Console().print(
        f"wrote bundle [bold]{bundle.config.name}[/] ({arch['name']}, {arch.get('encoder_name')}) to "
        f"{bundle.path} (sha256 {bundle.hash[:12]})"
    )


def import_smp_cmd(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="Folder written by smp's save_pretrained.")],
    out: Out,
    spec: Spec = None,
    bands: Bands = None,
    band_indexes: BandIndexes = None,
    mean: Mean = None,
    std: Std = None,
    scale: Scale = None,
    classes: Classes = None,
    patch_size: Patch = None,
    gsd: Gsd = None,
    overwrite: Overwrite = False,
) -> None:
    """Convert a segmentation-models-pytorch folder (config.json, model.safetensors) to a bundle."""
    with reported(ctx):
        if out.exists() and not overwrite:
            raise OutputError("exists; pass --overwrite to replace it", path=str(out))
        description = _description(spec, bands, band_indexes, mean, std, scale, classes, patch_size, gsd)
        from models.bundle.smp.load import import_model, load_smp_folder
        from pipeline.errors import BundleError

        if not path.is_dir():
            raise BundleError("not a folder (smp's save_pretrained writes one)", path=str(path))
        bundle = import_model(load_smp_folder(path, spec=description), out, overwrite=overwrite)
    _report(bundle)


def import_torchgeo_cmd(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="TorchGeo SemanticSegmentationTask checkpoint (.ckpt).")],
    out: Out,
    spec: Spec = None,
    bands: Bands = None,
    band_indexes: BandIndexes = None,
    mean: Mean = None,
    std: Std = None,
    scale: Scale = None,
    classes: Classes = None,
    patch_size: Patch = None,
    gsd: Gsd = None,
    trust_pickle: TrustPickle = False,
    overwrite: Overwrite = False,
) -> None:
    """Convert a TorchGeo segmentation checkpoint to a bundle (weights_only read unless --trust-pickle)."""
    with reported(ctx):
        if out.exists() and not overwrite:
            raise OutputError("exists; pass --overwrite to replace it", path=str(out))
        description = _description(spec, bands, band_indexes, mean, std, scale, classes, patch_size, gsd)
        from models.bundle.smp.load import import_model, load_torchgeo_checkpoint
        from pipeline.errors import BundleError

        if not path.is_file():
            raise BundleError("checkpoint not found", path=str(path))
        source = load_torchgeo_checkpoint(path, trust_pickle=trust_pickle, spec=description)
        bundle = import_model(source, out, overwrite=overwrite)
    _report(bundle)

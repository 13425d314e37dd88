"""``tilewise bundle import SOURCE ...`` and ``bundle export``: models in and out of tilewise's format.

``--model`` takes a MONAI bundle or an ONNX file as it is; importing one instead writes a tilewise
bundle (model.yaml + weights.safetensors, or the archive) that no longer needs the framework's config
machinery, and whose code, if any, was run once, at import, by a user who said they trust it.
Each source is one command of the ``import`` sub-app.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from flows.cli.errors import reported
from pipeline.errors import OutputError

import_app = typer.Typer(
    help="Import a model kept in another framework's format as a tilewise bundle.",
    no_args_is_help=True,
    add_completion=False,
)

TrustCode = Annotated[
    bool, typer.Option("--trust-code", help="Evaluate $ expressions in a MONAI config (Python code).")
]
TrustPickle = Annotated[
    bool, typer.Option("--trust-pickle", help="Allow a full unpickle of checkpoints (can run code).")
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]


def model_options(trust_code: bool) -> dict[str, bool]:
    """Kind options for ``open_model``: only those given, so kinds without them are not refused."""
    return {"trust_code": True} if trust_code else {}


@import_app.command("monai")
def import_monai_cmd(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="MONAI bundle folder (configs/, models/).")],
    out: Annotated[Path, typer.Option("--out", help="tilewise bundle folder to write.")],
    trust_code: TrustCode = False,
    trust_pickle: TrustPickle = False,
    overwrite: Overwrite = False,
) -> None:
    """Convert a MONAI bundle into a tilewise bundle (safetensors weights, model.yaml)."""
    with reported(ctx):
        if out.exists() and not overwrite:
            raise OutputError("exists; pass --overwrite to replace it", path=str(out))
        from models.bundle.monai_bundle.convert import import_monai

        bundle = import_monai(
            path, out, trust_code=trust_code, trust_pickle=trust_pickle, overwrite=overwrite
        )
    Console().print(
        f"wrote bundle [bold]{bundle.config.name}[/] to {bundle.path} (sha256 {bundle.hash[:12]})"
    )


def export_cmd(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="Model: a tilewise bundle, MONAI bundle, ...")],
    onnx: Annotated[Path, typer.Option("--onnx", help="ONNX file to write (the bundle's config embedded).")],
    batch: Annotated[
        int | None, typer.Option("--batch", min=1, help="Fix the batch dimension (default: dynamic).")
    ] = None,
    trust_code: TrustCode = False,
    overwrite: Overwrite = False,
) -> None:
    """Write a model as one ONNX file that ``--model`` accepts as it is."""
    with reported(ctx):
        from models.bundle.onnx import export_onnx
        from models.bundle.sources import open_model

        bundle = open_model(path, options=model_options(trust_code))
        written = export_onnx(bundle, onnx, batch=batch, overwrite=overwrite)
    Console().print(f"wrote {written} ({written.stat().st_size / 2**20:.1f} MiB)")

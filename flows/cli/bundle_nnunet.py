"""``tilewise bundle import nnunet``: an nnU-Net v2 model folder, converted once to a tilewise bundle.

The checkpoints are read once (``weights_only`` with an allow-list, or ``--trust-pickle``) and written
as safetensors with a model.yaml, so nothing unpickles afterwards: not a job, not a Dask worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from flows.cli.errors import reported
from flows.cli.options import model_options
from pipeline.errors import BundleError, OutputError


def import_nnunet_cmd(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="nnU-Net trained-model folder (TRAINER__PLANS__CONFIG).")],
    out: Annotated[Path, typer.Option("--out", help="Bundle folder to create.")],
    folds: Annotated[str | None, typer.Option(help="Folds to keep, e.g. 0,1 (default: all found).")] = None,
    checkpoint: Annotated[str | None, typer.Option(help="final|best")] = None,
    mirroring: Annotated[bool | None, typer.Option("--mirroring/--no-mirroring")] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow full unpickling.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing folder.")] = False,
) -> None:
    """Convert an nnU-Net v2 model folder to a bundle (safetensors + model.yaml)."""
    options = model_options(folds, checkpoint, mirroring)
    with reported(ctx):
        from models.bundle import save_bundle
        from models.bundle.sources import model_kind, open_model

        if model_kind(path) != "nnunet":
            raise BundleError("not an nnU-Net v2 trained-model folder", path=str(path))
        if out.exists() and not overwrite:
            raise OutputError("exists; pass --overwrite to replace it", path=str(out))
        source = open_model(path, trust_pickle=trust_pickle, options=options)
        bundle = save_bundle(out, source.config, source.build().state_dict(), overwrite=overwrite)
    folds_kept = ", ".join(bundle.config.card.get("nnunet", {}).get("folds", []))
    Console().print(
        f"wrote bundle [bold]{bundle.config.name}[/] (folds {folds_kept}) to {bundle.path} "
        f"(sha256 {bundle.hash[:12]})"
    )

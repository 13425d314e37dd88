"""A MONAI bundle written out as a tilewise bundle, once, so later runs need no MONAI config at all.

The network's weights become ``weights.safetensors`` and its ``network_def`` stays plain data in
``model.yaml`` (architecture ``monai_config``); a TorchScript bundle keeps its archive. A
``network_def`` that needed code (an expression, a class from the bundle's ``scripts/``) cannot be
written as data: import the bundle's TorchScript instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from models.bundle.load import Bundle, load_bundle
from models.bundle.monai_bundle.load import load_monai_bundle
from models.bundle.save import config_yaml, save_bundle
from models.bundle.schema import CONFIG_NAME
from models.nets.monai_config import stored_as_data
from pipeline.atomic import atomic_path
from pipeline.errors import BundleError


def import_monai(
    path: str | Path,
    out: str | Path,
    *,
    trust_code: bool = False,
    trust_pickle: bool = False,
    overwrite: bool = False,
) -> Bundle:
    """Read the MONAI bundle at ``path`` (as ``--model`` would) and save it as a tilewise bundle."""
    source = load_monai_bundle(Path(path), trust_pickle=trust_pickle, trust_code=trust_code)
    cfg = source.config
    card = {**cfg.card, "source": f"imported from MONAI bundle {Path(path).resolve().name}"}
    if source.archive is not None:
        archive = source.archive
        arch = {**cfg.architecture, "path": archive.name}
        config = cfg.model_copy(update={"architecture": arch, "card": card})
        with atomic_path(out, overwrite=overwrite) as tmp:
            tmp.mkdir(parents=True)
            (tmp / CONFIG_NAME).write_text(config_yaml(config), encoding="utf-8")
            shutil.copyfile(archive, tmp / archive.name)
        return load_bundle(out)
    net_def = cfg.architecture.get("network_def")
    if not stored_as_data(net_def):
        raise BundleError(
            "network_def needs code (a $ expression, or a class outside monai.networks.nets), so it "
            "cannot be stored as data; import a TorchScript export (models/model.ts) of this bundle instead",
            path=str(path),
        )
    state = source.build("cpu").state_dict()
    return save_bundle(out, cfg.model_copy(update={"card": card}), state, overwrite=overwrite)

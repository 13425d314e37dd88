"""An nnU-Net v2 trained-model folder, read and checked before any weights are touched.

The folder is what ``nnUNetv2_train`` leaves: ``dataset.json``, ``plans.json`` and ``fold_N/`` with
``checkpoint_final.pth`` or ``checkpoint_best.pth``, named ``TRAINER__PLANS__CONFIGURATION``. Every
problem (a missing or unreadable file, a configuration the plans lack, a fold that is not there) is
one :class:`BundleError` naming the file, so a bad folder fails before any scene is read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import BundleError

DATASET_JSON, PLANS_JSON = "dataset.json", "plans.json"
CHECKPOINTS = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}
_FOLD = re.compile(r"^fold_(\d+|all)$")


def looks_like_nnunet(p: Path) -> bool:
    """Names only: a folder with nnU-Net's json files or its ``fold_N`` folders (cheap, no reads)."""
    if not p.is_dir():
        return False
    has_json = (p / DATASET_JSON).is_file() or (p / PLANS_JSON).is_file()
    has_folds = any(_FOLD.match(c.name) for c in p.iterdir() if c.is_dir())
    return (has_json and (has_folds or "__" in p.name)) or (has_folds and p.name.count("__") == 2)


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BundleError(f"no {path.name} in the nnU-Net model folder", path=str(path))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"unreadable {path.name}: {exc}", path=str(path)) from exc
    if not isinstance(data, dict):
        raise BundleError(f"{path.name} must hold a JSON object", path=str(path))
    return data


def _fold_key(name: str) -> int | str:
    return int(name) if name.isdigit() else name


def find_folds(path: Path, checkpoint: str) -> dict[int | str, Path]:
    """Every ``fold_N`` that holds the chosen checkpoint, by fold."""
    name = CHECKPOINTS[checkpoint]
    found: dict[int | str, Path] = {}
    for child in sorted(path.iterdir()):
        m = _FOLD.match(child.name)
        if m and child.is_dir() and (child / name).is_file():
            found[_fold_key(m.group(1))] = child / name
    return found


@dataclass(frozen=True)
class NnUNetFolder:
    """What the folder holds, checked: its json files, its configuration and the checkpoints chosen."""

    path: Path
    dataset: dict[str, Any]
    plans: dict[str, Any]
    configuration_name: str
    configuration: dict[str, Any]  # with ``inherits_from`` resolved, as nnU-Net's plans manager does
    checkpoints: dict[int | str, Path]

    @property
    def plans_path(self) -> Path:
        return self.path / PLANS_JSON


def _configuration(plans: dict[str, Any], name: str, where: Path) -> dict[str, Any]:
    configs = plans.get("configurations")
    if not isinstance(configs, dict) or name not in configs:
        known = ", ".join(configs) if isinstance(configs, dict) else "none"
        raise BundleError(f"plans have no configuration {name!r} (they have: {known})", path=str(where))
    cfg = dict(configs[name])
    seen = {name}
    while "inherits_from" in cfg:
        parent = cfg.pop("inherits_from")
        if parent in seen or parent not in configs:
            raise BundleError(f"configuration {name!r} inherits from unknown {parent!r}", path=str(where))
        seen.add(parent)
        cfg = {**configs[parent], **cfg}
    return cfg


def read_folder(
    path: Path, *, folds: Sequence[int | str] | None = None, checkpoint: str = "final"
) -> NnUNetFolder:
    """Read and check an nnU-Net trained-model folder; ``folds`` None means every fold found."""
    if checkpoint not in CHECKPOINTS:
        raise BundleError(
            f"checkpoint must be {' or '.join(CHECKPOINTS)}, not {checkpoint!r}", path=str(path)
        )
    dataset = read_json(path / DATASET_JSON)
    plans = read_json(path / PLANS_JSON)
    parts = path.name.split("__")
    configs = plans.get("configurations") if isinstance(plans.get("configurations"), dict) else {}
    if len(parts) == 3:
        name = parts[2]
    elif len(configs) == 1:
        name = next(iter(configs))
    else:
        raise BundleError(
            "cannot tell the configuration: the folder is not named TRAINER__PLANS__CONFIGURATION",
            path=str(path),
        )
    cfg = _configuration(plans, name, path / PLANS_JSON)
    if cfg.get("previous_stage"):
        raise BundleError(
            f"configuration {name!r} is a cascade stage (it needs the predictions of "
            f"{cfg['previous_stage']!r} as input); cascades are not supported, use 3d_fullres or 3d_lowres",
            path=str(path),
        )
    found = find_folds(path, checkpoint)
    if folds is None:
        if not found:
            raise BundleError(
                f"no fold_N/{CHECKPOINTS[checkpoint]} in the nnU-Net model folder", path=str(path)
            )
        chosen = found
    else:
        chosen = {}
        for f in folds:
            key = _fold_key(str(f))
            if key not in found:
                raise BundleError(f"fold {f} has no {CHECKPOINTS[checkpoint]}",
                                  path=str(path / f"fold_{f}" / CHECKPOINTS[checkpoint]))  # fmt: skip
            chosen[key] = found[key]
    return NnUNetFolder(path, dataset, plans, name, cfg, chosen)

"""A bundle's ``model.yaml`` without its weights: what ``tilewise plan`` needs, without importing torch.

``load_bundle`` reads the config through ``read_config`` too, so the two cannot disagree on where the
folder is or what counts as a valid config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from models.bundle.schema import CONFIG_NAME, BundleConfig, validate_config
from pipeline.errors import BundleError

# libyaml's parser when PyYAML was built with it (the wheels are): the same safe constructors and
# resolver as ``yaml.safe_load``, 15x faster on a bundle's model.yaml (70 ms in Python here)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)``, parsed by libyaml where it is there."""
    return yaml.load(text, Loader=_LOADER)


def _one_line(exc: Exception) -> str:
    """A YAML error as one line: the problem and where (PyYAML's own text spans several lines)."""
    problem = getattr(exc, "problem", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else str(problem)


def read_config(path: str | Path) -> tuple[Path, bytes, BundleConfig]:
    """The bundle folder, the raw bytes of its model.yaml and the validated config (BundleError else)."""
    p = Path(path)
    folder = p.parent if p.name == CONFIG_NAME or p.is_file() else p
    cfg_path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise BundleError("bundle folder not found", path=str(folder))
    if not cfg_path.is_file():
        raise BundleError(f"no {CONFIG_NAME} in the bundle folder", path=str(folder))
    raw = cfg_path.read_bytes()
    try:
        data = load_yaml(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BundleError(f"not valid YAML: {_one_line(exc)}", path=str(cfg_path)) from exc
    return folder, raw, validate_config(data, path=str(cfg_path))


@dataclass(frozen=True)
class BundleHeader:
    """The validated config of a bundle folder; duck-types the parts of ``Bundle`` a plan reads."""

    path: Path
    config: BundleConfig

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.config.classes]

    @property
    def num_classes(self) -> int:
        return len(self.config.classes)


def read_header(path: str | Path) -> BundleHeader:
    folder, _, config = read_config(path)
    return BundleHeader(folder, config)

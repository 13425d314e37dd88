"""The parts of a MONAI bundle config tilewise needs, as plain data, with ``$`` code left unevaluated.

A MONAI config is a program: ``$`` strings are Python and ``_target_`` names any callable. We resolve
only the subtrees we use (``network_def``, ``preprocessing``, ``inferer``, ``postprocessing``) with
MONAI's own ``ConfigParser`` (so ``@`` references, ``%`` macros and relative ids mean what they mean to
MONAI), with ``instantiate=False`` and ``eval_expr=False``: nothing is constructed and no expression
runs. A subtree that still needs an expression fails with its id, unless the user trusts the code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from models.bundle.monai_bundle import CONFIG_DIR, METADATA, inference_config
from models.nets.monai_config import find_code
from pipeline.errors import BundleError


class MonaiConfig:
    """A bundle's metadata and inference config, parsed once; ``get(id)`` resolves one subtree."""

    def __init__(self, folder: Path, *, trust_code: bool = False) -> None:
        from monai.bundle import ConfigParser

        self.folder, self.trust_code = folder, trust_code
        self.metadata_path = folder / CONFIG_DIR / METADATA
        path = inference_config(folder)
        if path is None:
            raise BundleError("no configs/inference.json or .yaml in the MONAI bundle", path=str(folder))
        self.path = path
        try:
            self.metadata = json.loads(self.metadata_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BundleError(f"not readable JSON: {exc}", path=str(self.metadata_path)) from exc
        if not isinstance(self.metadata, dict):
            raise BundleError("metadata must be a JSON object", path=str(self.metadata_path))
        self.parser = ConfigParser()
        try:
            self.parser.read_config(str(path))
        except Exception as exc:  # json/yaml errors, duplicate keys
            raise BundleError(f"not a readable config: {_first_line(exc)}", path=str(path)) from exc
        self.parser["bundle_root"] = str(folder)
        try:
            self.parser.parse(reset=True)  # macros and relative ids; nothing is evaluated yet
        except Exception as exc:
            raise BundleError(f"not a readable config: {_first_line(exc)}", path=str(path)) from exc

    def has(self, id: str) -> bool:
        return id in self.parser

    def raw(self, id: str) -> Any:
        """Subtree ``id`` as written (macros expanded), references and expressions untouched."""
        if id not in self.parser:
            raise BundleError(f"the config has no {id!r}", path=str(self.path))
        return self.parser.get(id)

    def get(self, id: str) -> Any:
        """Subtree ``id`` with references resolved, as plain dicts/lists/scalars; BundleError if it
        needs a ``$`` expression and code is not trusted."""
        if id not in self.parser:
            raise BundleError(f"the config has no {id!r}", path=str(self.path))
        try:
            item = self.parser.get_parsed_content(id, instantiate=False, eval_expr=self.trust_code)
        except BundleError:
            raise
        except Exception as exc:  # unresolvable references, bad macros, expressions that fail
            raise BundleError(f"cannot resolve {id!r}: {_first_line(exc)}", path=str(self.path)) from exc
        value = self._plain(item)
        code = None if self.trust_code else find_code(value, id)
        if code:
            raise self._needs_code(code)
        return value

    def _needs_code(self, id: str) -> BundleError:
        return BundleError(
            f"{id} is a $ expression (Python code), which tilewise does not run by default; "
            "pass --trust-code if you trust this bundle",
            path=str(self.path),
        )

    def _plain(self, value: Any) -> Any:
        from monai.bundle.config_item import ConfigExpression, ConfigItem

        if isinstance(value, ConfigExpression):
            if not self.trust_code:
                raise self._needs_code(value.get_id() or "an item")
            return self._plain(value.evaluate())
        if isinstance(value, ConfigItem):
            return self._plain(value.get_config())
        if isinstance(value, dict):
            return {k: self._plain(v) for k, v in value.items() if k not in ("_desc_", "_mode_")}
        if isinstance(value, (list, tuple)):
            return [self._plain(v) for v in value]
        return value

    def network(self) -> Any:
        """The network built by MONAI (trusted code only; otherwise ``network_def`` is built by name).

        As ``monai.bundle run`` does, the bundle's folder goes on ``sys.path`` first, so a target in
        the bundle's own ``scripts/`` package resolves."""
        root = str(self.folder.resolve())
        if root not in sys.path:
            sys.path.insert(1, root)
        try:
            return self.parser.get_parsed_content("network_def", instantiate=True, eval_expr=True)
        except Exception as exc:
            raise BundleError(f"cannot build network_def: {_first_line(exc)}", path=str(self.path)) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

"""Offline STAC validation: pystac's validator, fed only schemas that ship with a package or the repo.

pystac ships the STAC core schemas; the extension schemas are committed under tests/data/stac-schemas
(Apache-2.0, see the LICENSE there) and PROJJSON comes with pyproj. Any other schema is an error, never
a download, so a test that needs one fails loudly instead of reaching for the network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pystac
from pystac.validation import JsonSchemaSTACValidator

SCHEMAS = Path(__file__).resolve().parents[2] / "data" / "stac-schemas"


def _local() -> dict[str, dict[str, Any]]:
    import pyproj

    found: dict[str, dict[str, Any]] = {}
    for path in sorted(SCHEMAS.glob("*.json")):  # NAME-vX.Y.Z.json, as published at its URL
        name, version = path.stem.rsplit("-", 1)
        uri = f"https://stac-extensions.github.io/{name}/{version}/schema.json"
        schema = json.loads(path.read_text())
        schema["$id"] = uri  # processing v1.1.0's own $id says v1.0.0; its URL is what others cite
        found[uri] = found[uri + "#"] = schema
    projjson = Path(pyproj.datadir.get_data_dir()) / "projjson.schema.json"
    schema = json.loads(projjson.read_text())
    found[schema["$id"]] = schema
    return found


class OfflineValidator(JsonSchemaSTACValidator):
    """Validates against local schemas only."""

    def __init__(self) -> None:
        super().__init__()
        self.schema_cache.update(_local())

    def _get_schema(self, schema_uri: str) -> dict[str, Any]:
        if schema_uri not in self.schema_cache:
            raise LookupError(f"no local copy of the STAC schema {schema_uri}; add it to {SCHEMAS}")
        return self.schema_cache[schema_uri]


def validate(stac: dict[str, Any] | pystac.STACObject) -> list[str]:
    """Validate a STAC object or its JSON dict offline; returns the schema URIs it was checked against."""
    data = stac if isinstance(stac, dict) else stac.to_dict(include_self_link=False)
    return pystac.validation.validate_dict(data, validator=OfflineValidator())

"""The bucket flow's memory: which inputs were processed, with which bundle and config, into what.

One small JSON object under the output prefix (``.tilewise/manifest.json``). A scene is skipped when
its entry has the same input fingerprint (ETags and sizes of its objects), bundle hash and config hash
and either succeeded or failed for a reason that retrying cannot fix (a corrupt file fails again
until it is replaced, which changes its ETag). Transient failures are retried on the next run.

Writes are whole-object PUTs (atomic on S3): the current manifest is first copied to
``manifest.prev.json``, then the new one is put with ``generation + 1``. A reader that finds the
manifest unreadable falls back to that copy, so a crash never leaves the flow without its memory.
Runs for one output prefix should not overlap (the served deployment runs one at a time); if they
do, the writer merges the other run's entries before writing its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from flows.storage import ObjectInfo, S3Prefix, safe_key
from pipeline.job.config import JobConfig

MANIFEST_DIR = ".tilewise"
log = logging.getLogger(__name__)


def fingerprint(objects: list[ObjectInfo], root: str) -> str:
    """Identity of a scene's content: its objects' relative keys, ETags and sizes."""
    h = hashlib.sha256()
    for o in sorted(objects, key=lambda o: o.key):
        h.update(f"{o.key.removeprefix(root)}|{o.etag}|{o.size}\n".encode())
    return h.hexdigest()


def config_hash(config: JobConfig) -> str:
    """The settings that change results (``hash_fields``) plus which outputs are made."""
    fields = {**config.hash_fields(), "outputs_made": config.outputs.model_dump(
        include={"format", "polygons", "quicklook"})}  # fmt: skip
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


class ManifestEntry(BaseModel):
    input: str
    objects: list[dict[str, Any]] = Field(default_factory=list)  # key, etag, size
    fingerprint: str
    bundle_hash: str
    config_hash: str
    status: Literal["ok", "failed", "refused"]
    retryable: bool = False
    reason: str = ""
    outputs: dict[str, str] = Field(default_factory=dict)
    seconds: float = 0.0
    time: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    flow_run: str | None = None


class Manifest(BaseModel):
    format: int = 1
    generation: int = 0
    updated: str = ""
    entries: dict[str, ManifestEntry] = Field(default_factory=dict)

    def needs(self, uri: str, fp: str, bundle_hash: str, cfg_hash: str) -> bool:
        """True unless this exact input was done with this bundle and config (or failed for good)."""
        e = self.entries.get(uri)
        if e is None or (e.fingerprint, e.bundle_hash, e.config_hash) != (fp, bundle_hash, cfg_hash):
            return True
        return e.status == "failed" and e.retryable


class ManifestStore:
    """Load and save the manifest under an output prefix with a backup generation."""

    def __init__(self, fs: Any, where: S3Prefix) -> None:
        self.fs, self.where = fs, where
        self.current = f"{where.bucket}/{safe_key(where, MANIFEST_DIR, 'manifest.json')}"
        self.backup = f"{where.bucket}/{safe_key(where, MANIFEST_DIR, 'manifest.prev.json')}"
        self.touched: dict[str, ManifestEntry] = {}
        self.loaded_generation = 0

    @property
    def uri(self) -> str:
        return f"s3://{self.current}"

    def _read(self, path: str) -> Manifest | None:
        try:
            raw = self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        try:
            return Manifest.model_validate_json(raw)
        except (ValidationError, ValueError):
            log.warning("manifest %s is unreadable; trying its previous generation", f"s3://{path}")
            return None

    def load(self) -> Manifest:
        manifest = self._read(self.current) or self._read(self.backup) or Manifest()
        self.loaded_generation = manifest.generation
        return manifest

    def record(self, manifest: Manifest, entry: ManifestEntry) -> None:
        manifest.entries[entry.input] = entry
        self.touched[entry.input] = entry
        self.save(manifest)

    def save(self, manifest: Manifest) -> None:
        """Merge concurrent writers' entries, back up the current object, then PUT the new one."""
        latest = self._read(self.current)
        if latest is not None and latest.generation != self.loaded_generation:
            merged = {**latest.entries, **self.touched}
            manifest.entries = merged
            manifest.generation = max(manifest.generation, latest.generation)
        if latest is not None:
            self.fs.copy(self.current, self.backup)
        manifest.generation += 1
        manifest.updated = datetime.now(UTC).isoformat(timespec="seconds")
        self.fs.pipe_file(self.current, manifest.model_dump_json(indent=1).encode())
        self.loaded_generation = manifest.generation

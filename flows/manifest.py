"""The bucket flow's memory: which inputs were processed, with which bundle and config, into what.

One small JSON object under the output prefix (``.tilewise/manifest.json``). A scene is skipped when
its entry has the same input fingerprint (ETags and sizes of its objects), bundle hash and config hash
and either succeeded or failed for a reason that retrying cannot fix (a corrupt file fails again
until it is replaced, which changes its ETag). Transient failures are retried on the next run.

Writes are whole-object PUTs (atomic on S3): the current manifest is first copied to
``manifest.prev.json``, then the new one is put with ``generation + 1``. A reader that finds the
manifest unreadable falls back to that copy, so a crash never leaves the flow without its memory.
Each PUT is a compare-and-swap (``If-Match`` the ETag read): when two runs on one output prefix
finish close together, the loser reads the winner's manifest, merges its own entries and tries again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from flows.leases import conditional_put, head_etag
from flows.storage import ObjectInfo, S3Prefix, safe_key
from pipeline.errors import OutputError
from pipeline.job.config import JobConfig

MANIFEST_DIR = ".tilewise"
CAS_ATTEMPTS = 50
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
        self._lock = threading.Lock()  # scenes in flight record from their own threads

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

    def latest(self) -> Manifest:
        """The manifest as it is now (another run may have recorded scenes since ``load``)."""
        return self._read(self.current) or self._read(self.backup) or Manifest()

    def record(self, manifest: Manifest, entry: ManifestEntry) -> None:
        with self._lock:
            manifest.entries[entry.input] = entry
            self.touched[entry.input] = entry
            self.save(manifest)

    def save(self, manifest: Manifest) -> None:
        """Compare-and-swap: merge this run's entries into the latest manifest and PUT it only if
        nobody wrote since we read it (``If-Match`` its ETag); else read again and retry. Two runs
        finishing together therefore never lose each other's entries."""
        for attempt in range(CAS_ATTEMPTS):
            etag = head_etag(self.fs, self.current)  # first: the content read next is as new or newer
            latest = self._read(self.current) if etag else None
            if latest is not None:
                manifest.entries = {**latest.entries, **self.touched}
                manifest.generation = latest.generation
            manifest.generation += 1
            manifest.updated = datetime.now(UTC).isoformat(timespec="seconds")
            if latest is not None:
                self.fs.copy(self.current, self.backup)
            data = manifest.model_dump_json(indent=1).encode()
            if conditional_put(self.fs, self.current, data, etag) is not None:
                self.loaded_generation = manifest.generation
                return
            time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))  # another run wrote: merge again
        raise OutputError(f"the manifest kept changing under this run ({CAS_ATTEMPTS} tries)", path=self.uri)

"""Scene leases and compare-and-swap writes on S3, through s3fs.

S3 has had conditional writes since 2024: a PUT with ``If-None-Match: *`` creates an object only if
the key is free, and one with ``If-Match: <ETag>`` replaces it only if nobody else has since. That is
all a lease needs (``pipeline.execution.lease``) and all a manifest needs to never lose an update.
Stores without them (older MinIO, some gateways) ignore the headers; the bucket flow then falls back
on the deployment's concurrency limit alone (docs/prefect.md).
"""

from __future__ import annotations

import errno
import hashlib
from typing import Any

from flows.storage import S3Prefix, safe_key
from pipeline.execution.lease import LeaseInfo

LEASE_DIR = (".tilewise", "leases")  # beside the manifest (flows.manifest.MANIFEST_DIR)


def precondition_failed(exc: BaseException) -> bool:
    """Whether an s3fs error is S3 refusing a conditional write (412, or 409 for a race between two)."""
    if isinstance(exc, FileExistsError):  # s3fs's translation of If-None-Match failing
        return True
    response = getattr(exc.__cause__, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
        return True
    return isinstance(exc, OSError) and exc.errno == errno.EINVAL and "recondition" in str(exc)


def head_etag(fs: Any, path: str) -> str | None:
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    return str(info.get("ETag") or info.get("etag") or "").strip('"') or None


def conditional_put(fs: Any, path: str, data: bytes, etag: str | None) -> str | None:
    """PUT ``data`` if the object is still version ``etag`` (None: if there is no object); its new
    ETag, or None when someone else wrote first."""
    try:
        if etag is None:
            out = fs.pipe_file(path, data, mode="create")
        else:
            out = fs.pipe_file(path, data, IfMatch=f'"{etag}"')
    except FileNotFoundError:  # If-Match on an object deleted meanwhile
        return None
    except OSError as exc:
        if precondition_failed(exc):
            return None
        raise
    new = (out or {}).get("ETag") if isinstance(out, dict) else None
    return str(new).strip('"') if new else head_etag(fs, path)


class S3LeaseStore:
    """One scene's lease as an object under the output prefix (``.tilewise/leases/<hash>.json``)."""

    def __init__(self, fs: Any, where: S3Prefix, scene_uri: str) -> None:
        name = hashlib.sha256(scene_uri.encode()).hexdigest()[:24] + ".json"
        self.fs = fs
        self.path = f"{where.bucket}/{safe_key(where, *LEASE_DIR, name)}"
        self.where = f"s3://{self.path}"

    def create(self, info: LeaseInfo) -> Any | None:
        return conditional_put(self.fs, self.path, info.encode(), None)

    def read(self) -> tuple[LeaseInfo | None, Any] | None:
        etag = head_etag(self.fs, self.path)  # first: content read after it is as new or newer
        if etag is None:
            return None
        try:
            raw = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        return LeaseInfo.decode(raw), etag

    def swap(self, token: Any, info: LeaseInfo) -> Any | None:
        return conditional_put(self.fs, self.path, info.encode(), token)

    def beat(self, token: Any, info: LeaseInfo) -> Any | None:
        return conditional_put(self.fs, self.path, info.encode(), token)

    def delete(self, token: Any) -> None:
        if head_etag(self.fs, self.path) == token:
            self.fs.rm_file(self.path)

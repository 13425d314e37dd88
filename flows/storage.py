"""Object storage for the bucket flow: parse prefixes, list objects, join keys safely, stage and upload.

Credentials and endpoints come only from the environment and the standard AWS config (botocore's
chain; ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` for S3-compatible stores); they are never
parameters, so they never reach the Prefect API, the manifest or a report.

A key is untrusted input. Every key the flow writes is built by ``safe_key`` from segments that are
checked one by one (no ``..``, ``.``, empty, backslash or control character), and must still lie under
the output prefix afterwards; local staging paths get the same treatment. Anything else is refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from pipeline.errors import ConfigError, InputError, OutputError

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UnsafeKey(InputError):
    """An object key that could address something outside its prefix (``..``, empty segments...)."""


def check_segment(part: str, key: str) -> str:
    if part in ("", ".", "..") or "/" in part or "\\" in part or _CONTROL.search(part):
        raise UnsafeKey(f"unsafe key segment {part!r} (.., ., empty, slash, backslash or control character)",
                        path=key)  # fmt: skip
    return part


@dataclass(frozen=True)
class S3Prefix:
    """``s3://bucket/some/prefix`` as bucket and prefix (no leading or trailing slash; "" = bucket)."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, uri: str) -> S3Prefix:
        scheme, sep, rest = uri.partition("://")
        if not sep or scheme.lower() not in ("s3", "s3a"):
            raise ConfigError("the bucket flow needs s3://bucket/prefix URLs", path=uri)
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET.match(bucket):
            raise ConfigError(f"invalid bucket name {bucket!r}", path=uri)
        prefix = prefix.strip("/")
        for part in prefix.split("/") if prefix else []:
            try:
                check_segment(part, uri)
            except UnsafeKey as exc:
                raise ConfigError(str(exc)) from None
        return cls(bucket, prefix)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @property
    def path(self) -> str:
        """The s3fs path of the prefix."""
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

    def contains(self, key: str) -> bool:
        return not self.prefix or key.startswith(self.prefix + "/")

    def relative(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key

    def key_uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


def safe_key(where: S3Prefix, *parts: str) -> str:
    """``prefix/part/part...`` where every part is a plain name; proven to stay under ``where``."""
    for part in parts:
        check_segment(part, "/".join(parts))
    key = "/".join([where.prefix, *parts] if where.prefix else parts)
    if not where.contains(key) or PurePosixPath(key).parts != tuple(key.split("/")):
        raise UnsafeKey("key would leave the output prefix", path=key)
    return key


def safe_relative(rel: str) -> PurePosixPath:
    """A key relative to its prefix as a path of plain names (refuses ``..``, absolute, empty parts)."""
    parts = rel.split("/")
    for part in parts:
        check_segment(part, rel)
    return PurePosixPath(*parts)


def local_under(root: Path, rel: PurePosixPath) -> Path:
    """``root/rel`` for a checked relative path, proven to stay inside ``root`` (symlinks resolved)."""
    for part in rel.parts:
        check_segment(part, str(rel))
    dest = root.joinpath(*rel.parts)
    if not dest.resolve().is_relative_to(root.resolve()):
        raise UnsafeKey("staging path would leave the staging folder", path=str(rel))
    return dest


def endpoint_url() -> str | None:
    """The S3 endpoint from the standard variables (None: AWS itself)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_filesystem() -> Any:
    """A fresh s3fs filesystem without listing caches (each run must see new objects)."""
    import s3fs

    options: dict[str, Any] = {"use_listings_cache": False, "skip_instance_cache": True}
    if endpoint_url():
        options["endpoint_url"] = endpoint_url()
    if os.environ.get("AWS_NO_SIGN_REQUEST", "").upper() in ("YES", "TRUE", "1"):
        options["anon"] = True
    return s3fs.S3FileSystem(**options)


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    etag: str
    size: int


def list_objects(fs: Any, where: S3Prefix) -> list[ObjectInfo]:
    """Every object under the prefix (fresh listing), sorted by key."""
    found = fs.find(where.path, detail=True)
    out = []
    for name, info in found.items():
        if info.get("type", "file") != "file":
            continue
        key = name.split("/", 1)[1] if "/" in name else ""
        if not key or not where.contains(key):
            continue
        etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
        out.append(ObjectInfo(key, etag, int(info.get("size") or info.get("Size") or 0)))
    return sorted(out, key=lambda o: o.key)


def upload(fs: Any, local: Path, where: S3Prefix, rel_dir: PurePosixPath) -> str:
    """Upload a staged file (one PUT: atomic) or folder (a Zarr store, replaced as a whole) to
    ``where/rel_dir/<name>``; returns its URI."""
    key = safe_key(where, *rel_dir.parts, local.name)
    if local.is_dir():
        if fs.exists(f"{where.bucket}/{key}"):
            fs.rm(f"{where.bucket}/{key}", recursive=True)
        for file in sorted(p for p in local.rglob("*") if p.is_file()):
            inner = file.relative_to(local).parts
            fs.put_file(str(file), f"{where.bucket}/{safe_key(where, *rel_dir.parts, local.name, *inner)}")
    else:
        fs.put_file(str(local), f"{where.bucket}/{key}")
    return where.key_uri(key)


def upload_outputs(
    fs: Any, outputs: dict[str, str], where: S3Prefix, rel_dir: PurePosixPath
) -> dict[str, str]:
    """Upload a scene's staged outputs, the report last (its presence means the scene is complete)."""
    if "report" not in outputs:
        raise OutputError("scene has no report to upload")
    uris = {}
    for kind, path in sorted(outputs.items(), key=lambda kv: kv[0] == "report"):
        local = Path(path)
        if not local.exists():
            raise OutputError("staged output is missing", path=path)
        uris[kind] = upload(fs, local, where, rel_dir)
    return uris


def _gdal_settings() -> dict[str, str]:
    settings = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_HTTP_MAX_RETRY": "3",
                "GDAL_HTTP_RETRY_DELAY": "1"}  # fmt: skip
    url = endpoint_url()
    if url:
        parts = urlsplit(url if "://" in url else f"https://{url}")
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host  # never the user-info
        settings.update(AWS_S3_ENDPOINT=netloc, AWS_HTTPS="NO" if parts.scheme == "http" else "YES",
                        AWS_VIRTUAL_HOSTING="FALSE")  # fmt: skip
    return settings


@contextmanager
def gdal_s3_env() -> Iterator[dict[str, str]]:
    """GDAL's ``/vsis3/`` settings derived from the same endpoint, as process variables (so Dask workers
    started inside inherit them). Variables the user set win; everything is restored afterwards."""
    added = {k: v for k, v in _gdal_settings().items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield added
    finally:
        for k in added:
            os.environ.pop(k, None)

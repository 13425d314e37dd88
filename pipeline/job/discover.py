"""Turn the INPUT argument (file, folder, glob or URL) into scenes, grouping NIfTI channel sets."""

from __future__ import annotations

import glob
import json
import os
import posixpath
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.errors import InputError
from pipeline.formats.kinds import SCENE_SUFFIXES, strip_scene_suffix
from pipeline.formats.source import SceneSource, kind_of

WORK_DIR = ".tilewise-work"


def _walk(root: Path) -> list[str]:
    """Files and ``.zarr`` folders under ``root``; symlinked folders are not followed (no loops).

    A folder named like a file scene (``x.tif/``, ``y.nii.gz/``) is listed, not entered: it is almost
    always a botched copy, and its reader then fails it with a clear reason instead of hiding it.
    """
    found: list[str] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        keep = []
        for d in sorted(dirs):
            if d.startswith(".") or d == WORK_DIR:
                continue
            if kind_of(d) is not None:
                found.append(os.path.join(folder, d))
            else:
                keep.append(d)
        dirs[:] = keep
        found.extend(os.path.join(folder, f) for f in sorted(files) if not f.startswith("."))
    return found


def _remote(uri: str) -> list[str]:
    import fsspec

    fs, _, paths = fsspec.get_fs_token_paths(uri)
    protocol = uri.split("://", 1)[0]
    if fs.isfile(paths[0]):
        return [uri]
    listed = fs.find(paths[0], withdirs=True, maxdepth=None)
    out = []
    for p in sorted(listed):
        kind = kind_of(p)
        is_zarr_root = kind == "zarr" and fs.isdir(p)
        is_file_scene = kind not in (None, "zarr") and ".zarr/" not in p
        if is_zarr_root or is_file_scene:
            out.append(f"{protocol}://{p}")
    return out


def candidates(target: str) -> list[str]:
    """Every path the INPUT argument names, before grouping and format checks."""
    if "://" in target and not target.startswith("file://"):
        return _remote(target)
    target = target.removeprefix("file://")
    path = Path(target)
    if any(ch in target for ch in "*?[") and not path.exists():
        return sorted(glob.glob(target, recursive=True))
    if path.is_dir() and kind_of(target) is None:
        return _walk(path)
    if path.exists() or path.is_symlink():
        return [target]
    raise InputError("no such file, folder or glob match", path=target)


def discover(target: str, *, exclude: str | None = None) -> list[SceneSource]:
    """Scenes under ``target``, in a stable order. Files with no known extension are ignored in
    folders and globs (a folder may hold sidecars); a single named file must be a scene."""
    paths = candidates(target)
    if exclude:
        root = os.path.abspath(exclude)
        paths = [p for p in paths if "://" in p or not os.path.abspath(p).startswith(root + os.sep)]
    single = len(paths) == 1 and paths[0] == target
    items = {p: _local_item(p) for p in paths if kind_of(p) == "stac" and not single}
    items = {p: data for p, data in items.items() if data is not None or "://" in p}
    assets = {a for p, data in items.items() for a in _asset_paths(data, p)}  # read through the items
    paths = [p for p in paths if kind_of(p) != "stac" or single or p in items]
    paths = [p for p in paths if "://" in p or os.path.abspath(p) not in assets]
    scenes: list[SceneSource] = []
    niftis = [p for p in paths if kind_of(p) == "nifti"]
    if niftis:  # the NIfTI reader imports nibabel and zarr: only when there are NIfTI files
        from pipeline.formats.nifti_reader import group_channel_files

        for group in group_channel_files(niftis):
            scenes.append(SceneSource("nifti", tuple(str(g) for g in group)))
    for p in paths:
        kind = kind_of(p)
        if kind == "stac":
            item = items.get(p) if p in items else _local_item(p)
            scenes.append(SceneSource(kind, (p,), _item_options(item)))
        elif kind in ("geotiff", "zarr"):
            scenes.append(SceneSource(kind, (p,)))
        elif kind is None and single:
            known = " ".join(sorted(SCENE_SUFFIXES, key=lambda s: (kind_of("x" + s) or "", s)))
            raise InputError(f"not a known scene type ({known})", path=p)
    return sorted(_unique_item_ids(scenes), key=lambda s: s.uri)


def _unique_item_ids(scenes: list[SceneSource]) -> list[SceneSource]:
    """Items of one folder that share an id keep their file names, so their outputs stay apart."""

    def key(s: SceneSource) -> tuple[str, Any]:
        return os.path.dirname(s.uri), dict(s.options).get("item_id")

    named = Counter(key(s) for s in scenes if s.options)
    return [SceneSource(s.kind, s.uris) if s.options and named[key(s)] > 1 else s for s in scenes]


def _local_item(path: str) -> dict[str, Any] | None:
    """A JSON file in a folder, if it is a STAC Item (other JSON there is a sidecar, not a scene).
    Remote keys are not read here: a request per key would cost more than a clear failure later."""
    if "://" in path:
        return None
    try:
        if os.path.getsize(path) > 16 * 2**20:
            return None
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    is_item = isinstance(data, dict) and data.get("type") == "Feature" and "stac_version" in data
    return data if is_item else None


def _asset_paths(item: dict[str, Any] | None, where: str = "") -> set[str]:
    """The local files an item's assets name (absolute): they are read through the item, not as
    scenes of their own."""
    found = set()
    base = os.path.dirname(where)
    for asset in (item or {}).get("assets", {}).values():
        href = str(asset.get("href", "")) if isinstance(asset, dict) else ""
        if href and "://" not in href:
            found.add(os.path.abspath(os.path.join(base, href)))
    return found


def _item_options(item: dict[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """A local STAC Item's id, which names its outputs: catalogues often call every file
    ``item.json``. Ids that are not plain file names are not used."""
    name = str((item or {}).get("id", "")).strip()
    plain = name and name not in (".", "..") and not any(ch in name for ch in "/\\\0")
    return (("item_id", name),) if plain else ()


def scene_stem(source: SceneSource) -> str:
    """Output base name: a local STAC Item's id, else the file name without its scene extension (and
    without a channel suffix)."""
    item_id = dict(source.options).get("item_id") if source.kind == "stac" else None
    if item_id:
        return str(item_id)
    uri = source.uri.split("?", 1)[0].split("#", 1)[0] if "://" in source.uri else source.uri
    name = uri.rstrip("/").rsplit("/", 1)[-1]  # never a query string: presigned URLs carry secrets
    name = strip_scene_suffix(name)
    if len(source.uris) > 1 and len(name) > 5 and name[-5] == "_" and name[-4:].isdigit():
        name = name[:-5]
    return name


def _plain(uri: str) -> str:
    """A URI or path in ``/`` form without a ``file://`` scheme, query or trailing slash."""
    uri = uri.removeprefix("file://")
    if "://" in uri:
        return uri.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    return os.path.abspath(uri).replace(os.sep, "/").rstrip("/")


def input_root(target: str) -> str:
    """The folder the INPUT argument names, that output subfolders mirror: the folder itself, or a
    glob's folder before its first wildcard (``scenes/*/x.tif`` -> ``scenes``)."""
    cut = min((i for i, ch in enumerate(target) if ch in "*?["), default=None)
    if cut is not None and not ("://" not in target and Path(target).exists()):
        target = target[:cut].rsplit("/", 1)[0] if "/" in target[:cut] else "."
    return _plain(target)


def mirrored_dir(uri: str, target: str) -> PurePosixPath:
    """The scene's folder relative to the INPUT folder (``IN/a/x.tif`` -> ``a``), where its outputs
    go under OUTPUT, so same-named scenes in different folders never collide. Empty for a single
    file and for anything not under the input folder; never has ``..`` or empty parts."""
    root, path = input_root(target), _plain(uri)
    if path == root or not path.startswith(root + "/"):
        return PurePosixPath()
    rel = posixpath.dirname(path[len(root) + 1 :])
    parts = [p for p in rel.split("/") if p]
    if any(p in (".", "..") for p in parts):
        return PurePosixPath()
    return PurePosixPath(*parts)

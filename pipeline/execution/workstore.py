"""A scene's intermediate state under the output's work folder: what makes a job resumable.

Layout of ``<output>/.tilewise-work/<scene-key>/``:
- ``state.json``   the plan and hashes the state belongs to (a mismatch wipes the folder);
- ``labels.zarr``  uint8 labels, one chunk per block write region (so each chunk has one writer), in
                   Zarr v2 so GDAL reads it straight into the COG (``gdal_zarr``);
- ``probs.zarr``   optional probabilities ``(K, *spatial)``, one chunk per class and block (uint8
                   p * 255, or float32 scores when labels are inverted from them);
- ``blocks/``      one ``.npz`` per block once computed: its interior canvas and its partial sums;
- ``merged/``      one empty marker per block once its seams are merged (its chunk is final).

Every file appears by atomic rename, so after a crash (kill -9 included) a file is either complete or
absent; a rerun redoes exactly the blocks whose file is absent.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from pipeline.core.box import Box

if TYPE_CHECKING:
    from pipeline.core.blending import SeamPiece

Index = tuple[int, ...]
# A block's chunk is written whole, even when it is all fill value: zarr otherwise compares every
# chunk with the fill value first, a pass over each block on the writer thread for a chunk that is
# almost never empty (a missing chunk and a written one read back the same).
_WRITE_ALL = {"write_empty_chunks": True}
# A block file larger than this is not kept in memory between its write and the merges that read it:
# an nnU-Net slab's window shares (~260 MB for a 512x512x32 slab) held for two blocks were a fifth of a
# 512^3 job's peak. Those merges read only the shares they need, from the page cache.
CACHE_ENTRY_BYTES = 64 * 2**20


def _name(index: Index) -> str:
    return "_".join(str(i) for i in index)


def _atomic_bytes(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not keep a half-written block file around
        raise


@dataclass(frozen=True)
class StoredArray:
    """An uncompressed member of a block file, read only when asked (``StoredShare``)."""

    path: Path
    offset: int  # of the data, past the member's .npy header
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    fortran_order: bool

    def load(self) -> np.ndarray:
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            flat = np.fromfile(fh, dtype=self.dtype, count=math.prod(self.shape))
        return flat.reshape(self.shape, order="F" if self.fortran_order else "C")


def _load_stored_npz(path: Path, keep: Callable[[str], bool] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an uncompressed ``.npz`` (what ``np.savez`` writes), read straight from the file.

    ``np.load`` reads each member through ``zipfile``, which checks its CRC-32 and copies it through
    Python bytes: a merge reads the partial sums of up to ``2^d`` blocks, and that took 0.8 s of CPU
    in an 8192² job. A block file is only ever seen complete (atomic rename), so the members are read
    where their local headers say they start; a compressed member goes through ``np.load`` as before.
    ``keep``: which members to read (by name), all by default.
    """
    return _members(path, keep, lazy=False)  # type: ignore[return-value]


def _members(
    path: Path, keep: Callable[[str], bool] | None, *, lazy: bool
) -> dict[str, np.ndarray | StoredArray]:
    """The members ``keep`` names, read now, or (``lazy``, uncompressed ones) where their data lies."""
    arrays: dict[str, np.ndarray | StoredArray] = {}
    with open(path, "rb") as fh, zipfile.ZipFile(fh) as archive:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            if keep is not None and not keep(name):
                continue
            if info.compress_type != zipfile.ZIP_STORED:
                with archive.open(info) as member:
                    arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
                continue
            fh.seek(info.header_offset)
            local = fh.read(30)  # the local file header: its name and extra field lengths end it
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            fh.seek(info.header_offset + 30 + name_len + extra_len)
            if not lazy:
                arrays[name] = np.lib.format.read_array(fh, allow_pickle=False)
                continue
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            arrays[name] = StoredArray(path, fh.tell(), dtype, tuple(shape), fortran)
    return arrays


def gdal_zarr(
    shape: tuple[int, ...], chunks: tuple[int, ...], path: Path, dtype: str = "uint8"
) -> zarr.Array:
    """A Zarr v2 array (uint8 unless told) with zstd chunks: the layout GDAL 3.10's Zarr driver reads
    (its Zarr v3 reader knows no ``bytes`` codec, which zarr-python 3 writes into every v3 array)."""
    import numcodecs

    return zarr.create_array(
        store=str(path),
        shape=shape,
        dtype=dtype,
        chunks=tuple(min(c, max(1, n)) for c, n in zip(chunks, shape, strict=True)),
        zarr_format=2,
        compressors=numcodecs.Zstd(level=3),
        fill_value=0,
        overwrite=True,
    )


def gdal_name(array: Any) -> str | None:
    """The GDAL dataset name of a Zarr v2 array on local disk, or None when GDAL cannot read it (a
    work store from before v2, a view, an in-memory array)."""
    meta = getattr(array, "metadata", None)
    root = getattr(getattr(array, "store", None), "root", None)
    if getattr(meta, "zarr_format", None) != 2 or root is None:
        return None
    return f'ZARR:"{root}"'


def _meets(a: Box, b: Box) -> bool:
    return not a.intersect(b).empty


class WorkStore:
    """Intermediate arrays, per-block results and completion markers of one scene."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._cache: OrderedDict[Index, dict[str, Any]] = OrderedDict()
        # In sweep order a merge finds its own block and its left neighbour here; the row above comes
        # from disk (page cache). A larger cache grew the job's peak with the scene's width (~20 MB a block).
        self.cache_size = 2

    # -- lifecycle -------------------------------------------------------------------------------
    def prepare(
        self,
        state: dict[str, Any],
        spatial_shape: tuple[int, ...],
        chunks: tuple[int, ...],
        classes: int,
        probabilities: bool,
        probabilities_dtype: str = "uint8",
    ) -> bool:
        """Create the store, or keep it when it belongs to the same plan. Returns True if resumed."""
        state_file = self.root / "state.json"
        state = json.loads(json.dumps(state, sort_keys=True))  # tuples compare as the lists they load as
        if state_file.exists():
            try:
                if json.loads(state_file.read_text()) == state:
                    return True
            except (OSError, ValueError):
                pass
            shutil.rmtree(self.root)
        (self.root / "blocks").mkdir(parents=True, exist_ok=True)
        (self.root / "merged").mkdir(exist_ok=True)
        gdal_zarr(spatial_shape, chunks, self.root / "labels.zarr")
        if probabilities:
            # one chunk per class and block: GDAL reads a band's block from its own chunk (with all
            # classes in one chunk it decoded the chunk once per band: 3.6 s of CPU, not 1.0, at 8192²)
            gdal_zarr((classes, *spatial_shape), (1, *chunks), self.root / "probs.zarr", probabilities_dtype)
        _atomic_bytes(state_file, lambda fh: fh.write(json.dumps(state, sort_keys=True).encode()))
        return False

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def labels(self, mode: str = "r+") -> zarr.Array:
        return zarr.open_array(store=str(self.root / "labels.zarr"), mode=mode).with_config(_WRITE_ALL)

    def probabilities(self, mode: str = "r+") -> zarr.Array | None:
        path = self.root / "probs.zarr"
        if not path.exists():
            return None
        return zarr.open_array(store=str(path), mode=mode).with_config(_WRITE_ALL)

    # -- computed blocks ---------------------------------------------------------------------------
    def block_path(self, index: Index) -> Path:
        return self.root / "blocks" / f"{_name(index)}.npz"

    def has_block(self, index: Index) -> bool:
        return self.block_path(index).exists()

    def put_block(
        self,
        index: Index,
        interior: Box,
        labels: np.ndarray,
        probs: np.ndarray | None,
        pieces: list[SeamPiece],
    ) -> None:
        arrays: dict[str, np.ndarray] = {
            "interior": np.array([interior.start, interior.stop], dtype=np.int64).reshape(2, -1),
            "labels": labels,
            "boxes": np.array([[b.start, b.stop] for b, *_ in pieces], dtype=np.int64).reshape(
                len(pieces), 2, interior.ndim
            ),
        }
        if probs is not None:
            arrays["probs"] = probs
        if pieces and len(pieces[0]) == 3:  # nnU-Net's float16 sums: each window's rank in its order
            arrays["ranks"] = np.array([p[2] for p in pieces], dtype=np.int64)  # type: ignore[misc]
        for i, (_, sums, *_rank) in enumerate(pieces):
            arrays[f"piece{i}"] = sums
        _atomic_bytes(self.block_path(index), lambda fh: np.savez(fh, **arrays))
        if sum(a.nbytes for a in arrays.values()) <= CACHE_ENTRY_BYTES:
            self._remember(index, arrays)

    def _cached(self, index: Index) -> dict[str, Any] | None:
        """The block's arrays if in memory, or read whole and kept when the file is small."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        path = self.block_path(index)
        if path.stat().st_size > CACHE_ENTRY_BYTES:
            return None
        arrays = _load_stored_npz(path)
        self._remember(index, arrays)
        return arrays

    def get_block(self, index: Index) -> dict[str, Any]:
        """The block's own results (``interior``, ``labels``, ``probs``); its shares only when cached."""
        data = self._cached(index)
        if data is None:
            data = _load_stored_npz(self.block_path(index), lambda name: not name.startswith("piece"))
        return data

    def pieces(self, index: Index, within: Sequence[Box] | None = None) -> list[SeamPiece]:
        """The block's seam shares: those overlapping ``within`` (all by default). Of a block file too big
        to keep, each share stays on disk until the merge reads it (``StoredArray``)."""
        data = self._cached(index)
        if data is None:
            data = self.get_block(index)
        boxes = [Box(tuple(map(int, b[0])), tuple(map(int, b[1]))) for b in data["boxes"]]
        wanted = [i for i, box in enumerate(boxes) if within is None or any(_meets(box, w) for w in within)]
        if any(f"piece{i}" not in data for i in wanted):  # a big file: each share read when merged
            names = {f"piece{i}" for i in wanted}
            data = {**data, **_members(self.block_path(index), names.__contains__, lazy=True)}
        if "ranks" in data:
            ranks = [tuple(map(int, r)) for r in data["ranks"]]
            return [(boxes[i], data[f"piece{i}"], ranks[i]) for i in wanted]  # type: ignore[misc]
        return [(boxes[i], data[f"piece{i}"]) for i in wanted]

    def drop_block(self, index: Index) -> None:
        self._cache.pop(index, None)
        self.block_path(index).unlink(missing_ok=True)

    def _remember(self, index: Index, arrays: dict[str, Any]) -> None:
        self._cache[index] = arrays
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    # -- merge markers -----------------------------------------------------------------------------
    def is_merged(self, index: Index) -> bool:
        return (self.root / "merged" / _name(index)).exists()

    def mark_merged(self, index: Index) -> None:
        _atomic_bytes(self.root / "merged" / _name(index), lambda fh: None)

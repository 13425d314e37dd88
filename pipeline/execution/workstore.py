"""A scene's intermediate state under the output's work folder: what makes a job resumable.

Layout of ``<output>/.tilewise-work/<scene-key>/``:
- ``state.json``   the plan and hashes the state belongs to (a mismatch wipes the folder);
- ``labels.zarr``  uint8 labels, one chunk per block write region (so each chunk has one writer), in
                   Zarr v2 so GDAL reads it straight into the COG (``gdal_zarr``);
- ``probs.zarr``   optional probabilities ``(K, *spatial)``, chunked the same way (uint8 p * 255, or
                   float32 scores when labels are inverted from them);
- ``blocks/``      one ``.npz`` per block once computed: its interior canvas and its partial sums;
- ``merged/``      one empty marker per block once its seams are merged (its chunk is final).

Every file appears by atomic rename, so after a crash (kill -9 included) a file is either complete or
absent; a rerun redoes exactly the blocks whose file is absent.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from pipeline.core.box import Box

if TYPE_CHECKING:
    from pipeline.core.blending import SeamPiece

Index = tuple[int, ...]


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
            gdal_zarr(
                (classes, *spatial_shape), (classes, *chunks), self.root / "probs.zarr", probabilities_dtype
            )
        _atomic_bytes(state_file, lambda fh: fh.write(json.dumps(state, sort_keys=True).encode()))
        return False

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def labels(self, mode: str = "r+") -> zarr.Array:
        return zarr.open_array(store=str(self.root / "labels.zarr"), mode=mode)

    def probabilities(self, mode: str = "r+") -> zarr.Array | None:
        path = self.root / "probs.zarr"
        return zarr.open_array(store=str(path), mode=mode) if path.exists() else None

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
        self._remember(index, arrays)

    def get_block(self, index: Index) -> dict[str, Any]:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        with np.load(self.block_path(index)) as data:
            arrays = {k: data[k] for k in data.files}
        self._remember(index, arrays)
        return arrays

    def pieces(self, index: Index) -> list[SeamPiece]:
        data = self.get_block(index)
        boxes = data["boxes"]
        out: list[SeamPiece] = [
            (Box(tuple(map(int, b[0])), tuple(map(int, b[1]))), data[f"piece{i}"])
            for i, b in enumerate(boxes)
        ]
        if "ranks" in data:
            out = [(box, sums, tuple(map(int, r))) for (box, sums), r in zip(out, data["ranks"], strict=True)]
        return out

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

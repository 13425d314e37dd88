"""NIfTI labels and probabilities out, on the input's voxel grid, with label tables for the viewers.

The header's grid fields are copied verbatim from the input, so the written affine is bit-identical and
the labels overlay the input in ITK-SNAP, 3D Slicer and napari. Label tables (Slicer ``.ctbl``, ITK-SNAP
label descriptions) carry the class names and the colours of ``pipeline.formats.colours``.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from pipeline.atomic import atomic_path
from pipeline.errors import ConfigError, InputError
from pipeline.formats.colours import class_rgba
from pipeline.formats.kinds import NIFTI_SUFFIXES
from pipeline.formats.nifti_reader import NiftiScene

# Header fields that define the voxel-to-world mapping: copied verbatim so the affine is bit-identical.
_GRID_FIELDS = (
    "qform_code",
    "sform_code",
    "quatern_b",
    "quatern_c",
    "quatern_d",
    "qoffset_x",
    "qoffset_y",
    "qoffset_z",
    "srow_x",
    "srow_y",
    "srow_z",
    "pixdim",
    "xyzt_units",
)
LABEL_INTENT = 1002  # NIFTI_INTENT_LABEL
_SPACES = re.compile(r"\s+")
_ITKSNAP_HEADER = f"""{"#" * 48}
# ITK-SnAP Label Description File
# File format:
# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL
# Fields:
#    IDX:   Zero-based index
#    -R-:   Red color component (0..255)
#    -G-:   Green color component (0..255)
#    -B-:   Blue color component (0..255)
#    -A-:   Label transparency (0.00 .. 1.00)
#    VIS:   Label visibility (0 or 1)
#    MSH:   Label mesh visibility (0 or 1)
#  LABEL:   Label description
{"#" * 48}"""


@dataclass(frozen=True)
class LabelFiles:
    image: Path
    ctbl: Path | None = None
    itksnap: Path | None = None


def _gzipped(dest: Path) -> bool:
    return dest.name.lower().endswith(".nii.gz")


def _stem(dest: Path) -> str:
    return dest.name[: -len(".nii.gz")] if _gzipped(dest) else dest.stem


def _image_like(scene: NiftiScene, data: np.ndarray, dtype: np.dtype) -> nib.Nifti1Image:
    """New data under a fresh header carrying the input's grid fields verbatim (codes included).

    NIfTI-2 when the input is NIfTI-2 or a dim exceeds NIfTI-1's int16 limit."""
    src = scene.meta.header
    big = isinstance(src, nib.Nifti2Header) or max(data.shape) > 32767
    cls = nib.Nifti2Image if big else nib.Nifti1Image
    hdr = cls.header_class()
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(dtype)
    for key in _GRID_FIELDS:
        hdr[key] = src[key]
    pixdim = hdr["pixdim"].copy()
    pixdim[data.ndim + 1 :] = 1.0  # grid spacing kept; the time/channel step of a 4-D input is not ours
    hdr["pixdim"] = pixdim
    return cls(data, None, header=hdr, dtype=dtype)


def _save(img: nib.Nifti1Image, dest: Path, overwrite: bool) -> None:
    """Temp then rename; gzip chosen by the final name (nibabel would judge the temp name)."""
    with atomic_path(dest, overwrite=overwrite) as tmp, open(tmp, "wb") as raw:
        stream: Any = (
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) if _gzipped(dest) else raw
        )
        img.to_file_map({"image": nib.FileHolder(fileobj=stream)})
        stream.close()


def _check_dest(dest: str | os.PathLike[str]) -> Path:
    path = Path(dest)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise ConfigError(f"NIfTI output must end in .nii or .nii.gz: {path}")
    return path


def write_nifti_labels(
    labels_native: np.ndarray,
    dest: str | os.PathLike[str],
    *,
    scene: NiftiScene,
    class_names: Sequence[str],
    class_colors: Sequence[Any] | None = None,
    overwrite: bool = False,
    tables: bool = True,
) -> LabelFiles:
    """uint8 labels on the input grid (bit-identical affine, qform/sform and codes, intent LABEL),
    plus a 3D Slicer ``<name>.ctbl`` and an ITK-SNAP ``<name>_itksnap.txt`` label table beside it."""
    path = _check_dest(dest)
    labels = np.asarray(labels_native)
    if labels.shape != scene.native_shape:
        raise InputError(f"labels {labels.shape} are not on the grid {scene.native_shape}", path=str(path))
    img = _image_like(scene, labels.astype(np.uint8, copy=False), np.dtype(np.uint8))
    img.header.set_intent(LABEL_INTENT)
    img.header["cal_min"], img.header["cal_max"] = 0, max(1, len(class_names) - 1)
    img.header["descrip"] = b"tilewise labels"
    _save(img, path, overwrite)
    if not tables:
        return LabelFiles(path)
    colors = class_rgba(class_names, class_colors)
    ctbl, snap = path.with_name(f"{_stem(path)}.ctbl"), path.with_name(f"{_stem(path)}_itksnap.txt")
    _write_text(ctbl, format_ctbl(class_names, colors, ctbl.name), overwrite)
    _write_text(snap, format_itksnap_labels(class_names, colors), overwrite)
    return LabelFiles(path, ctbl, snap)


def write_nifti_probabilities(
    probs_native: np.ndarray,
    dest: str | os.PathLike[str],
    *,
    scene: NiftiScene,
    dtype: Any = np.uint8,
    overwrite: bool = False,
) -> Path:
    """``(K, *native)`` probabilities as a 4-D NIfTI, classes on the last axis, on the input grid.

    uint8 stores round(p * 255) with ``scl_slope = 1/255``, so viewers and nibabel read p back.
    """
    path = _check_dest(dest)
    probs = np.moveaxis(np.asarray(probs_native), 0, -1)
    if probs.shape[:-1] != scene.native_shape:
        raise InputError(f"probabilities {probs.shape} not on the grid {scene.native_shape}", path=str(path))
    if len(scene.native_shape) == 2:
        probs = probs[:, :, None, :]
    out = np.dtype(dtype)
    if out == np.uint8:
        data = np.rint(np.clip(probs, 0, 1) * 255).astype(np.uint8)
    elif out == np.float32:
        data = probs.astype(np.float32, copy=False)
    else:
        raise ConfigError(f"probability dtype must be uint8 or float32, not {out}")
    img = _image_like(scene, data, out)
    if out == np.uint8:
        img.header.set_slope_inter(1 / 255, 0)
    img.header["intent_name"] = b"class probs"
    _save(img, path, overwrite)
    return path


def _write_text(path: Path, text: str, overwrite: bool) -> None:
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")


def format_ctbl(names: Sequence[str], colors: Sequence[tuple[int, int, int, int]], title: str = "") -> str:
    """3D Slicer color table: ``index name R G B A`` (no spaces in names; index 0 transparent)."""
    rows = [f"# Color table file {title}".rstrip(), f"# {len(names)} values"]
    for i, (n, (r, g, b, a)) in enumerate(zip(names, colors, strict=True)):
        rows.append(f"{i} {_SPACES.sub('_', n.strip()) or f'label_{i}'} {r} {g} {b} {a if i else 0}")
    return "\n".join(rows) + "\n"


def format_itksnap_labels(names: Sequence[str], colors: Sequence[tuple[int, int, int, int]]) -> str:
    """ITK-SNAP Label Description File: ``IDX -R- -G- -B- -A-- VIS MSH LABEL``, alpha 0..1, 0 clear."""
    head = _ITKSNAP_HEADER.splitlines()
    rows = []
    for i, (n, (r, g, b, a)) in enumerate(zip(names, colors, strict=True)):
        vis, a = (1, a) if i else (0, 0)
        rows.append(
            f'{i:5d} {r:5d} {g:4d} {b:4d} {a / 255:8.4g} {vis:2d} {vis:2d}    "{n.replace(chr(34), "")}"'
        )
    return "\n".join(head + rows) + "\n"


def read_ctbl(path: str | os.PathLike[str]) -> dict[int, tuple[str, tuple[int, int, int, int]]]:
    """Parse a Slicer ``.ctbl`` back to ``{index: (name, rgba)}``."""
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            i, name, *rgba = line.split()
            out[int(i)] = (name, (int(rgba[0]), int(rgba[1]), int(rgba[2]), int(rgba[3])))
    return out


def read_itksnap_labels(path: str | os.PathLike[str]) -> dict[int, tuple[str, tuple[int, int, int, float]]]:
    """Parse an ITK-SNAP label description file back to ``{index: (name, (r, g, b, alpha))}``."""
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            fields, name = line.split('"', 1)[0].split(), line.split('"')[1]
            out[int(fields[0])] = (name, (int(fields[1]), int(fields[2]), int(fields[3]), float(fields[4])))
    return out

"""Fuzz targets shared by the tests (a few hundred examples) and ``benchmarks/soak_faults.py`` (thousands).

Readers get random bytes and real files (a CC0 GeoTIFF, a crop of the Apache-2.0 CT as NIfTI, the
same as Zarr/OME-Zarr) with mutated headers; only our own error classes may come out. The planner and
``infer_labels``/``infer_array`` get random shapes and patch/overlap/block combinations; a valid
combination must give what a single-block run gives, an invalid one our own ``ValueError``.
"""

from __future__ import annotations

import gzip
import json
import struct
import tempfile
import warnings
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hypothesis import strategies as st

from pipeline.core.box import Box
from pipeline.errors import TilewiseError

TRIED: Counter[str] = Counter()  # inputs tried per target (the soak script prints these)
OUTCOMES: Counter[str] = Counter()  # target:outcome, outcome = opened | <TilewiseError subclass>


# ------------------------------------------------------------------------------------- base files
@cache
def base_tiff(data: str) -> bytes:
    return (Path(data) / "geo/rasterio/rgb-byte-tenth.tif").read_bytes()


@cache
def base_nii(data: str) -> bytes:
    import nibabel as nib

    img = nib.load(Path(data) / "medical/totalsegmentator/example_ct_sm.nii.gz").slicer[40:64, 30:50, 10:18]
    return img.to_bytes()


def _probe(scene: Any) -> None:
    """What a job does first with a scene: small reads at both corners and the nodata mask."""
    spatial = scene.shape[1:]
    edge = tuple(min(n, 16) for n in spatial)
    for start in ((0,) * len(spatial), tuple(n - e for n, e in zip(spatial, edge))):
        box = Box.from_shape(edge, start=start)
        scene.read(box)
        scene.read_nodata(box)


def _outcome(target: str, opener: Any) -> None:
    TRIED[target] += 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scene = opener()
            try:
                _probe(scene)
            finally:
                scene.close()
    except TilewiseError as exc:
        OUTCOMES[f"{target}:{type(exc).__name__}"] += 1
        assert "\n" not in str(exc), str(exc)
        return
    OUTCOMES[f"{target}:opened"] += 1


# ---------------------------------------------------------------------------------------- GeoTIFF
mutations = st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), min_size=1, max_size=12)


@st.composite
def tiff_inputs(draw: st.DrawFn, data: str) -> bytes:
    """Random bytes (half the time behind a TIFF magic), or the real file mutated / truncated."""
    how = draw(st.sampled_from(["random", "mutate_header", "mutate_any", "truncate"]))
    base = base_tiff(data)
    if how == "random":
        magic = draw(st.sampled_from([b"", b"II*\0", b"MM\0*", b"II+\0\x08\0\0\0"]))
        return magic + draw(st.binary(max_size=2048))
    if how == "truncate":
        return base[: draw(st.integers(0, len(base) - 1))]
    raw = bytearray(base)
    span = 512 if how == "mutate_header" else len(raw)
    for pos, value in draw(mutations):
        raw[pos % span] = value
    return bytes(raw)


def check_tiff(blob: bytes) -> None:
    from pipeline.formats.geotiff import open_geotiff

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.tif"
        path.write_bytes(blob)
        _outcome("geotiff", lambda: open_geotiff(str(path)))


# ------------------------------------------------------------------------------------------ NIfTI
# (offset, struct format) of the NIfTI-1 header fields that drive allocation, typing and geometry
NII_FIELDS = {
    "sizeof_hdr": (0, "<i"),
    "dim0": (40, "<h"),
    "dim1": (42, "<h"),
    "dim2": (44, "<h"),
    "dim3": (46, "<h"),
    "dim4": (48, "<h"),
    "dim5": (50, "<h"),
    "datatype": (70, "<h"),
    "bitpix": (72, "<h"),
    "pixdim0": (76, "<f"),
    "pixdim1": (80, "<f"),
    "pixdim3": (88, "<f"),
    "vox_offset": (108, "<f"),
    "scl_slope": (112, "<f"),
    "scl_inter": (116, "<f"),
    "qform_code": (252, "<h"),
    "sform_code": (254, "<h"),
    "quatern_b": (256, "<f"),
    "qoffset_x": (268, "<f"),
    "srow_x0": (280, "<f"),
    "srow_y1": (300, "<f"),
    "srow_z2": (320, "<f"),
}
_INTS = st.sampled_from([0, 1, 2, 3, 4, 5, 7, 8, 16, 64, 255, 256, 512, 768, 2048, 32767, -1, -32768])
_FLOATS = st.sampled_from([0.0, -1.0, 1.0, 0.5, 352.0, 1e30, -1e30, float("nan"), float("inf")])


@st.composite
def nii_inputs(draw: st.DrawFn, data: str) -> tuple[bytes, bool]:
    """(file bytes, gzip it?): the real crop with header fields set to edge values, bytes flipped in
    the header, truncated, or random bytes."""
    how = draw(st.sampled_from(["fields", "fields", "flip_header", "truncate", "random"]))
    gz = draw(st.booleans())
    if how == "random":
        return draw(st.binary(max_size=1024)), gz
    raw = bytearray(base_nii(data))
    if how == "truncate":
        return bytes(raw[: draw(st.integers(0, len(raw) - 1))]), gz
    if how == "flip_header":
        for pos, value in draw(mutations):
            raw[pos % 352] = value
        return bytes(raw), gz
    for name in draw(st.lists(st.sampled_from(sorted(NII_FIELDS)), min_size=1, max_size=4, unique=True)):
        offset, fmt = NII_FIELDS[name]
        value = draw(_INTS if fmt in ("<h", "<i") else _FLOATS)
        struct.pack_into(fmt, raw, offset, value)
    return bytes(raw), gz


def check_nii(blob: bytes, gz: bool) -> None:
    from pipeline.formats.nifti_reader import open_nifti

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("fuzz.nii.gz" if gz else "fuzz.nii")
        path.write_bytes(gzip.compress(blob, mtime=0) if gz else blob)
        _outcome("nifti", lambda: open_nifti(str(path), cache_dir=tmp))


# ------------------------------------------------------------------------------------------- Zarr
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**31), 2**31) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
ARRAY_KEYS = ["shape", "data_type", "chunk_grid", "codecs", "fill_value", "dimension_names", "zarr_format"]


ATTR_KEYS = ["_ARRAY_DIMENSIONS", "nodata", "crs", "transform", "ome"]
OME_KEYS = ["multiscales", "datasets", "axes", "path", "coordinateTransformations"]


@st.composite
def zarr_inputs(draw: st.DrawFn) -> tuple[str, str, Any]:
    """(where, key, value): a key of the array's zarr.json, of its attributes (opened as a plain array),
    or of the OME group's multiscales, replaced by random JSON."""
    where = draw(st.sampled_from(["array", "attrs", "ome"]))
    keys = {"array": ARRAY_KEYS, "attrs": ATTR_KEYS, "ome": OME_KEYS}[where]
    return where, draw(st.sampled_from(keys)), draw(json_values)


def _small_ome(root: Path) -> None:
    import zarr

    group = zarr.open_group(str(root), mode="w")
    arr = group.create_array("0", shape=(6, 10, 12), dtype="int16", chunks=(3, 5, 6))
    arr[...] = np.arange(720, dtype=np.int16).reshape(6, 10, 12)
    ms = {
        "version": "0.5",
        "axes": [{"name": n, "type": "space"} for n in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2, 1, 1]}]}],
    }
    group.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}


def check_zarr(where: str, key: str, value: Any) -> None:
    from pipeline.formats.zarr_reader import open_zarr

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "fuzz.zarr"
        _small_ome(root)
        meta_path = root / ("zarr.json" if where == "ome" else "0/zarr.json")
        meta = json.loads(meta_path.read_text())
        if where == "array":
            meta[key] = value
        elif where == "attrs":
            meta.setdefault("attributes", {})[key] = value
            root = root / "0"
        else:
            ms = meta["attributes"]["ome"]["multiscales"]
            if key == "multiscales":
                meta["attributes"]["ome"]["multiscales"] = value
            elif key == "path":
                ms[0]["datasets"][0]["path"] = value
            else:
                ms[0][key] = value
        meta_path.write_text(json.dumps(meta, allow_nan=True))
        _outcome("zarr", lambda: open_zarr(str(root)))


# ---------------------------------------------------------------------------------------- planner
@st.composite
def plan_inputs(draw: st.DrawFn) -> dict[str, Any]:
    """Shapes, windows, overlaps and blocks; a quarter invalid (zero sizes, block < window, bad overlap,
    a window with the wrong number of axes)."""
    dims = draw(st.integers(1, 3))
    ints = st.lists(st.integers(1, {1: 2000, 2: 300, 3: 80}[dims]), min_size=dims, max_size=dims)
    shape = tuple(draw(ints))
    roi = tuple(draw(st.lists(st.integers(1, 64), min_size=dims, max_size=dims)))
    overlap = draw(st.floats(0, 0.95))
    block = draw(
        st.one_of(st.none(), st.builds(lambda extra: tuple(r + e for r, e in zip(roi, extra)), ints))
    )
    bad = draw(st.sampled_from([None] * 12 + ["zero_shape", "zero_roi", "block", "overlap", "axes"]))
    if bad == "zero_shape":
        shape = (0, *shape[1:])
    elif bad == "zero_roi":
        roi = (*roi[:-1], draw(st.sampled_from([0, -2])))
    elif bad == "block":
        block = tuple(max(0, r - 1) for r in roi)
    elif bad == "overlap":
        overlap = draw(st.sampled_from([-0.5, 1.0, 1.5, float("nan")]))
    elif bad == "axes":
        roi = (*roi, 7)
    return {"shape": shape, "roi": roi, "overlap": overlap, "block": block, "bad": bad}


def check_plan(case: dict[str, Any]) -> None:
    from pipeline.core.tiling import BlockPlan

    TRIED["planner"] += 1
    try:
        plan = BlockPlan.build(case["shape"], case["roi"], case["overlap"], case["block"])
    except ValueError:
        assert case["bad"], f"valid plan refused: {case}"
        OUTCOMES["planner:ValueError"] += 1
        return
    assert not case["bad"], f"invalid plan accepted: {case}"
    OUTCOMES["planner:valid"] += 1
    owned, covered = 0, 0
    for axis in plan.axes:  # per axis (the plan is separable): windows owned once, writes partition
        runs = [axis.owned(k) for k in range(len(axis.writes))]
        assert [a for a, _ in runs if a != _] == sorted(a for a, _ in runs if a != _)
        assert sum(b - a for a, b in runs) == len(axis.starts)
        assert axis.writes[0][0] == 0 and axis.writes[-1][1] == axis.size
        assert all(w[1] == v[0] for w, v in zip(axis.writes, axis.writes[1:]))
        assert axis.starts[-1] + axis.roi >= axis.size and axis.starts[0] <= 0  # the grid covers the axis
        assert all(0 < b - a <= axis.roi for a, b in zip(axis.starts, axis.starts[1:]))  # without gaps
    for block in plan.blocks() if int(np.prod(plan.grid_shape)) <= 512 else ():
        owned += block.window_count
        covered += int(np.prod(block.write.shape))
        assert block.interior.empty or block.write.intersect(block.interior) == block.interior
    if owned:
        assert owned == plan.window_count and covered == int(np.prod(plan.spatial_shape))


class TinyModel(torch.nn.Module):
    """A deterministic 3-class 'network' whose scores vary per pixel and per channel."""

    out_channels = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x[:, :1]
        b = x[:, -1:]
        return torch.cat([a * 1.5 - b, torch.sin(3 * a) + b, 0.3 * a * b], dim=1)


@st.composite
def infer_inputs(draw: st.DrawFn) -> dict[str, Any]:
    dims = draw(st.integers(1, 3))
    limit = {1: 90, 2: 40, 3: 14}[dims]
    spatial = tuple(draw(st.lists(st.integers(1, limit), min_size=dims, max_size=dims)))
    roi = tuple(draw(st.lists(st.integers(1, limit // 2 + 2), min_size=dims, max_size=dims)))
    invalid = draw(st.sampled_from([None] * 6 + ["overlap", "block", "roi"]))
    overlap = draw(st.floats(0, 0.9))
    if invalid == "overlap":
        overlap = draw(st.sampled_from([1.0, -0.25, 2.0]))
    block = tuple(r + draw(st.integers(0, limit)) for r in roi)
    if invalid == "block":
        block = tuple(max(0, r - draw(st.integers(1, 3))) for r in roi)
    if invalid == "roi":
        roi = (*roi[:-1], draw(st.sampled_from([0, -3])))
    return {
        "spatial": spatial,
        "roi": roi,
        "overlap": overlap,
        "block": block,
        "blend": draw(st.sampled_from(["gaussian", "constant", "cosine", "crop"])),
        "masked": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
        "invalid": invalid,
    }


def check_infer(case: dict[str, Any]) -> None:
    """Any block size gives the single-block scores (1e-5) and labels (except at exact near-ties)."""
    from pipeline.engine.arrays import infer_array, infer_labels

    TRIED["infer"] += 1
    rng = np.random.default_rng(case["seed"])
    image = rng.normal(size=(2, *case["spatial"])).astype(np.float32)
    mask = rng.random(case["spatial"]) < 0.3 if case["masked"] else None
    kw = {"patch_size": case["roi"], "overlap": case["overlap"], "blend": case["blend"], "mask": mask}
    model = TinyModel()
    if case["invalid"]:
        try:
            infer_array(image, model, block_size=case["block"], **kw)
        except ValueError:
            OUTCOMES["infer:ValueError"] += 1
            return
        raise AssertionError(f"invalid {case['invalid']} accepted: {case}")
    whole = infer_array(image, model, block_size=None, **kw)
    parts = infer_array(image, model, block_size=case["block"], **kw)
    assert np.allclose(whole, parts, atol=1e-5, equal_nan=True), np.nanmax(np.abs(whole - parts))
    labels = infer_labels(image, model, block_size=case["block"], **kw)
    top2 = np.sort(np.nan_to_num(whole, nan=0.0), axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-4
    expected = np.where(np.isnan(whole).any(0), 255, np.nan_to_num(whole).argmax(0))
    assert (labels[clear] == expected[clear]).all()
    OUTCOMES["infer:exact"] += 1

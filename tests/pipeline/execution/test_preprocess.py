"""Preprocessor: channel checks that name the scene, exact normalisation maths, sparse scene stats."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.bundle import BundleConfig, validate_config
from pipeline.core.box import Box
from pipeline.errors import InputError
from pipeline.execution.preprocess import Preprocessor
from pipeline.formats.scene import GeoMeta, Scene
from tests.pipeline.formats.sample_data import S2_STACK, read_window

CT = Path("/work/shared/data/medical/totalsegmentator/example_ct_sm.nii.gz")


class ArrayScene:
    """Test scaffolding: the Scene protocol over an in-memory array, recording every read."""

    def __init__(
        self, data: np.ndarray, uri: str = "mem://scene", nodata: float | None = None, geo: bool = False
    ):
        self.data = data
        self.uri = uri
        self.shape = tuple(data.shape)
        self.dtype = data.dtype
        self.meta = GeoMeta(crs=None, transform=None, nodata=nodata) if geo else None
        self.nodata = nodata
        self.reads: list[Box] = []

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    def _inside(self, box: Box) -> tuple[Box, tuple[slice, ...]]:
        inner = box.intersect(Box.from_shape(self.spatial_shape))
        return inner, inner.slices(box.start)

    def read(self, box: Box, fill: float = 0.0) -> np.ndarray:
        self.reads.append(box)
        out = np.full((self.shape[0], *box.shape), fill, dtype=self.dtype)
        inner, where = self._inside(box)
        if not inner.empty:
            out[(slice(None), *where)] = self.data[(slice(None), *inner.slices())]
        return out

    def read_nodata(self, box: Box) -> np.ndarray | None:
        if self.nodata is None:
            return None
        mask = np.ones(box.shape, dtype=bool)
        inner, where = self._inside(box)
        if not inner.empty:
            mask[where] = np.all(self.data[(slice(None), *inner.slices())] == self.nodata, axis=0)
        return mask

    def close(self) -> None:
        pass


def config(
    channels: list[str], norm: dict[str, Any], band_indexes: list[int] | None = None, dims: int = 2
) -> BundleConfig:
    inputs: dict[str, Any] = {"channels": channels, "normalization": norm}
    if band_indexes is not None:
        inputs["band_indexes"] = band_indexes
    return validate_config(
        {
            "name": "s2-water",
            "architecture": {"name": "unet", "in_channels": len(channels), "out_channels": 2},
            "spatial_dims": dims,
            "inputs": inputs,
            "patch_size": [64] * dims,
            "classes": [{"name": "land", "color": "#a0a0a0"}, {"name": "water", "color": "#1f78b4"}],
        }
    )


BANDS = ["B02", "B03", "B04", "B08"]


def test_array_scene_satisfies_protocol() -> None:
    scene = ArrayScene(np.zeros((1, 4, 4), np.uint8))
    assert isinstance(scene, Scene)
    assert scene.read(Box((-1, -1), (2, 2))).shape == (1, 3, 3)


def test_zscore_maths_and_dtype() -> None:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 4000, size=(4, 20, 30)).astype(np.uint16)
    mean, std = [100.0, 200.0, 300.0, 400.0], [10.0, 20.0, 30.0, 40.0]
    pre = Preprocessor.from_bundle(
        config(BANDS, {"kind": "zscore", "mean": mean, "std": std}), ArrayScene(raw)
    )
    out = pre(raw)
    assert out.dtype == np.float32 and out.shape == raw.shape
    want = (raw - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    np.testing.assert_allclose(out, want, rtol=1e-6)
    assert raw.dtype == np.uint16 and raw.max() < 4000  # input untouched


def test_band_indexes_select_and_reorder() -> None:
    raw = np.stack([np.full((3, 3), v, np.float32) for v in (10, 20, 30, 40, 50)])
    cfg = config(["nir", "red"], {"kind": "none"}, band_indexes=[4, 3])
    pre = Preprocessor.from_bundle(cfg, ArrayScene(raw))
    assert pre.in_channels == 2
    np.testing.assert_array_equal(pre.select(raw)[:, 0, 0], [40, 30])
    np.testing.assert_array_equal(pre(raw)[:, 0, 0], [40, 30])
    # already selected input is accepted explicitly
    np.testing.assert_array_equal(pre.apply(pre.select(raw), selected=True)[0][:, 0, 0], [40, 30])


def test_channel_mismatch_names_scene_and_bands() -> None:
    scene = ArrayScene(np.zeros((3, 8, 8), np.uint16), uri="s3://bucket/rgb.tif", geo=True)
    cfg = config(BANDS, {"kind": "zscore", "mean": [0.0] * 4, "std": [1.0] * 4})
    with pytest.raises(InputError) as info:
        Preprocessor.from_bundle(cfg, scene)
    assert (
        str(info.value)
        == "s3://bucket/rgb.tif: scene has 3 bands, bundle s2-water expects 4 (B02,B03,B04,B08)"
    )
    with pytest.raises(InputError, match=r"scene has 3 bands, .* from bands 1,2,3,5"):
        Preprocessor.from_bundle(config(BANDS, {"kind": "none"}, band_indexes=[1, 2, 3, 5]), scene)
    five = ArrayScene(np.zeros((5, 8, 8), np.uint16), uri="/data/x.nii.gz")
    with pytest.raises(InputError, match=r"/data/x.nii.gz: scene has 5 channels.*band_indexes"):
        Preprocessor.from_bundle(config(BANDS, {"kind": "none"}), five)


def test_ct_window_and_scale() -> None:
    hu = np.array([[[-1000.0, -160.0, 40.0, 240.0, 3000.0]]], np.float32)
    pre = Preprocessor.from_bundle(
        config(["ct"], {"kind": "ct_window", "center": 40, "width": 400}), ArrayScene(hu)
    )
    np.testing.assert_allclose(pre(hu)[0, 0], [0.0, 0.0, 0.5, 1.0, 1.0])
    pre = Preprocessor.from_bundle(
        config(["ct"], {"kind": "scale", "factor": 0.5, "offset": -1}), ArrayScene(hu)
    )
    np.testing.assert_allclose(pre(hu)[0, 0], hu[0, 0] * 0.5 - 1)
    pre = Preprocessor.from_bundle(config(["ct"], {"kind": "none"}), ArrayScene(hu))
    np.testing.assert_array_equal(pre(hu), hu)


def test_percentile_small_scene_is_exact() -> None:
    rng = np.random.default_rng(1)
    raw = rng.gamma(2.0, 100.0, size=(2, 50, 70)).astype(np.float32)
    scene = ArrayScene(raw)
    pre = Preprocessor.from_bundle(config(["a", "b"], {"kind": "percentile", "lower": 5, "upper": 95}), scene)
    for c in range(2):
        lo, hi = np.percentile(raw[c].astype(np.float64), [5, 95])
        assert pre.lower_values is not None and pre.upper_values is not None
        assert pre.lower_values[c] == pytest.approx(lo) and pre.upper_values[c] == pytest.approx(hi)
        want = (np.clip(raw[c], lo, hi) - lo) / (hi - lo)
        np.testing.assert_allclose(pre(raw)[c], want, atol=1e-6)
    out = pre(raw)
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0)
    # stats are per scene, not per block: a block gives the same values as the whole
    block = raw[:, 10:30, 20:40]
    np.testing.assert_allclose(pre(block), out[:, 10:30, 20:40])


def test_percentile_large_scene_reads_sparse_sample() -> None:
    rng = np.random.default_rng(2)
    raw = rng.normal(1000, 200, size=(1, 1500, 1200)).astype(np.float32)
    scene = ArrayScene(raw)
    budget = 1 << 16
    pre = Preprocessor.from_bundle(config(["a"], {"kind": "percentile"}), scene, sample_budget=budget)
    total = sum(b.size for b in scene.reads)
    assert 0.5 * budget <= total <= budget  # a small, bounded fraction of the 1.8 Mpx scene
    assert max(b.size for b in scene.reads) <= 64 * 64
    assert min(b.start[0] for b in scene.reads) == 0 and max(b.stop[0] for b in scene.reads) == 1500
    assert min(b.start[1] for b in scene.reads) == 0 and max(b.stop[1] for b in scene.reads) == 1200
    scene.reads.clear()
    dry = Preprocessor.from_bundle(config(["a"], {"kind": "percentile"}), scene, stats=False)
    assert scene.reads == [] and dry.lower_values is None
    lo, hi = np.percentile(raw, [2, 98])
    assert pre.lower_values is not None and pre.upper_values is not None
    assert abs(pre.lower_values[0] - lo) < 15 and abs(pre.upper_values[0] - hi) < 15


def test_nan_and_nodata_become_zero_and_are_reported() -> None:
    raw = np.full((2, 4, 5), 7.0, np.float32)
    raw[0, 1, 1] = np.nan
    raw[:, 2, 3] = -9999.0
    scene = ArrayScene(raw, nodata=-9999.0, geo=True)
    cfg = config(["a", "b"], {"kind": "zscore", "mean": [5.0, 5.0], "std": [2.0, 2.0]})
    pre = Preprocessor.from_bundle(cfg, scene)
    box = Box.from_shape((4, 5))
    out, invalid = pre.apply(scene.read(box), scene.read_nodata(box))
    expect = np.zeros((4, 5), bool)
    expect[1, 1] = expect[2, 3] = True
    np.testing.assert_array_equal(invalid, expect)
    assert np.isfinite(out).all()
    assert (out[:, 1, 1] == 0).all() and (out[:, 2, 3] == 0).all()  # -9999 would be -5002 if kept
    assert (out[:, ~expect] == 1.0).all()
    np.testing.assert_array_equal(pre(scene.read(box), scene.read_nodata(box)), out)
    with pytest.raises(InputError, match="nodata mask shape"):
        pre.apply(raw, np.zeros((3, 3), bool))


def test_percentile_stats_ignore_nodata_and_nan() -> None:
    raw = np.arange(100, dtype=np.float32).reshape(1, 10, 10)
    raw[0, :5] = 0.0  # nodata collar, half the scene
    raw[0, 9, 9] = np.nan
    pre = Preprocessor.from_bundle(
        config(["a"], {"kind": "percentile", "lower": 0, "upper": 100}), ArrayScene(raw, nodata=0.0)
    )
    assert pre.lower_values is not None and pre.upper_values is not None
    assert pre.lower_values[0] == 50 and pre.upper_values[0] == 98


@pytest.fixture(scope="module")
def s2_crop() -> np.ndarray:
    return read_window(S2_STACK, (0, 768), (0, 1024))


def test_real_sentinel2_four_band_bundle(s2_crop: np.ndarray) -> None:
    scene = ArrayScene(s2_crop, uri=str(S2_STACK), geo=True)
    cfg = config(BANDS, {"kind": "percentile", "lower": 2, "upper": 98}, band_indexes=[1, 2, 3, 4])
    pre = Preprocessor.from_bundle(cfg, scene, sample_budget=1 << 16)
    assert sum(b.size for b in scene.reads) <= 1 << 16
    exact = np.percentile(s2_crop.reshape(4, -1).astype(np.float64), [2, 98], axis=1)
    assert pre.lower_values is not None and pre.upper_values is not None
    spread = exact[1] - exact[0]
    assert (np.abs(pre.lower_values - exact[0]) < 0.1 * spread).all()
    assert (np.abs(pre.upper_values - exact[1]) < 0.1 * spread).all()
    out = pre(scene.read(Box((100, 200), (356, 456))))
    assert out.shape == (4, 256, 256) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0 and 0.05 < out.mean() < 0.95
    # NIR (B08) is the 4th band; reordering picks it first
    nir_first = config(["B08", "B04"], {"kind": "none"}, band_indexes=[4, 3])
    sel = Preprocessor.from_bundle(nir_first, scene).select(s2_crop[:, :8, :8])
    np.testing.assert_array_equal(sel, s2_crop[[3, 2], :8, :8])
    with pytest.raises(InputError, match=r"scene has 4 bands, bundle s2-water expects 3 \(B02,B03,B04\)"):
        Preprocessor.from_bundle(config(BANDS[:3], {"kind": "none"}), scene)


def test_real_ct_window() -> None:
    nib = pytest.importorskip("nibabel")
    if not CT.exists():
        pytest.skip("shared CT sample not present")
    hu = np.asarray(nib.load(CT).dataobj)[None]
    scene = ArrayScene(hu, uri=str(CT))
    pre = Preprocessor.from_bundle(
        config(["ct"], {"kind": "ct_window", "center": 40, "width": 400}, dims=3), scene
    )
    out = pre(scene.read(Box.from_shape(hu.shape[1:])))
    assert out.shape == hu.shape and out.min() == 0.0 and out.max() == 1.0
    air = hu[0] < -160
    assert air.any() and (out[0][air] == 0).all()
    soft = (hu[0] > -100) & (hu[0] < 180)
    np.testing.assert_allclose(out[0][soft], (hu[0][soft] + 160) / 400, atol=1e-6)


@pytest.mark.parametrize(
    "norm",
    [
        {"kind": "percentile", "lower": 2, "upper": 98},
        {"kind": "zscore", "mean": [900.0, 800.0, 700.0, 600.0], "std": [300.0, 250.0, 200.0, 150.0]},
        {"kind": "scale", "factor": 1e37, "offset": 0.0},  # overflows to inf: invalid, like NaN
    ],
)
def test_window_by_window_prepare_equals_whole_block_apply(s2_crop: np.ndarray, norm: dict) -> None:
    """The engine keeps blocks raw and normalises each window as it is batched: same values, same mask."""
    raw = s2_crop[:, :300, :400].astype(np.float32)
    raw[1, 10:20, 30:50] = np.nan
    raw[:, 200:, :17] = 0.0  # nodata collar
    scene = ArrayScene(raw, uri=str(S2_STACK), nodata=0.0, geo=True)
    pre = Preprocessor.from_bundle(config(BANDS, norm), scene)
    box = Box.from_shape((300, 400))
    nodata = scene.read_nodata(box)
    whole, invalid = pre.apply(raw, nodata)
    assert np.array_equal(pre.invalid(raw, nodata), invalid) and invalid[15, 40] and invalid[250, 5]
    assert norm["kind"] != "scale" or invalid.mean() > 0.9  # 1e37 x reflectance overflows float32
    for window in [Box((0, 0), (64, 64)), Box((37, 111), (101, 203)), Box((236, 336), (300, 400))]:
        where = window.slices()
        patch = pre.prepare(raw[(slice(None), *where)], invalid[where])
        np.testing.assert_array_equal(patch, whole[(slice(None), *where)])
        assert np.isfinite(patch).all()


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16])
@pytest.mark.parametrize(
    "norm",
    [
        {"kind": "scale", "factor": 1 / 255, "offset": 0.0},  # every value finite: nothing is looked up
        {"kind": "scale", "factor": 2e36, "offset": 0.0},  # the larger values overflow to inf
        {"kind": "zscore", "mean": [3.0, 100.0, 7.0, 0.0], "std": [2.0, 1e-44, 5.0, 1.0]},  # std 0 in f32
    ],
)
def test_small_integer_finiteness_table_equals_normalising_the_block(
    s2_crop: np.ndarray, dtype: Any, norm: dict
) -> None:
    """8- and 16-bit input is checked through a table of every value the dtype holds: the mask must be
    what normalising the block itself gives (here against the float path on the same values)."""
    info = np.iinfo(dtype)
    spread = s2_crop[:, :200, :300].astype(np.int64) // 7 + info.min // 2
    raw = np.clip(spread, info.min, info.max).astype(dtype)
    raw[0, :5, :5] = info.max
    raw[2, -5:, -5:] = info.min
    pre = Preprocessor.from_bundle(config(BANDS, norm), ArrayScene(raw, uri=str(S2_STACK), geo=True))
    expected = np.zeros(raw.shape[1:], bool)
    for c in range(raw.shape[0]):  # the float path, plane by plane, as for a float scene
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            plane = pre._normalise(raw[c : c + 1].astype(np.float32), c)[0]
        expected |= ~np.isfinite(plane)
    got = pre.invalid(raw, None)
    np.testing.assert_array_equal(got, expected)
    assert got.any() == (norm.get("factor") == 2e36 or norm["kind"] == "zscore")

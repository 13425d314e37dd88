"""Quicklook PNGs for real 2-D rasters and a real 3-D brain volume, through any Scene."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import rasterio
from PIL import Image

from pipeline.core.box import Box
from pipeline.errors import InputError, OutputError
from pipeline.formats.colours import parse_color
from pipeline.formats.geotiff import open_geotiff
from pipeline.formats.quicklook import _overlay, label_centre, write_quicklook
from pipeline.formats.scene import VolumeMeta
from tests.pipeline.formats.sample_data import (
    CT,
    CT_SEG,
    MNI_GM,
    MNI_T1,
    RGB_BYTE,
    S2_LANDCOVER,
    S2_STACK,
    need,
    requires_data,
)

pytestmark = requires_data

COVER_COLORS = [
    (0, 0, 0),
    (34, 139, 34),
    (255, 215, 0),
    (124, 252, 0),
    (173, 255, 47),
    (139, 69, 19),
    (0, 128, 128),
    (255, 0, 0),
    (30, 144, 255),
]
S2_OPTS = {"class_colors": COVER_COLORS, "rgb_bands": (2, 1, 0)}  # the stack is B, G, R, NIR


class PlainScene:
    """Any Scene without ``read_overview``: forces the generic strip-sampling path."""

    def __init__(self, inner):
        self.inner, self.uri, self.shape = inner, inner.uri, inner.shape
        self.dtype, self.meta = inner.dtype, inner.meta

    @property
    def spatial_shape(self):
        return self.shape[1:]

    def read(self, box, fill=0.0):
        return self.inner.read(box, fill)

    def read_nodata(self, box):
        return self.inner.read_nodata(box)

    def close(self):
        pass


def _colors_in(png):
    rgb = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3)
    return {tuple(c) for c in np.unique(rgb, axis=0).tolist()}


def _landcover():
    with rasterio.open(S2_LANDCOVER) as src:
        cover = src.read(1)
    cover[cover == 0] = 255  # unlabelled -> nodata, left unpainted
    return cover


def test_sentinel2_quicklook_with_overlay(tmp_path):
    scene, cover = open_geotiff(str(S2_STACK)), _landcover()
    dest = tmp_path / "s2.png"
    write_quicklook(scene, cover, dest, max_size=512, alpha=1.0, **S2_OPTS)
    image = Image.open(dest)
    assert image.format == "PNG" and image.size == (512, 256)
    present = {c for c in range(1, 9) if (cover[1::3, 1::3] == c).sum() > 200}
    assert {COVER_COLORS[c] for c in present} <= _colors_in(dest)

    blended = tmp_path / "half.png"
    write_quicklook(scene, cover, blended, max_size=512, alpha=0.5, **S2_OPTS)
    none = tmp_path / "none.png"
    write_quicklook(scene, cover, none, max_size=512, alpha=0.0, **S2_OPTS)
    a, b, c = (np.asarray(Image.open(p), dtype=np.int32) for p in (dest, blended, none))
    painted = (a != c).any(axis=2)
    assert 0.1 < painted.mean() < 0.6  # about the labelled share of the scene (31 %)
    assert np.abs(2 * b[painted] - a[painted] - c[painted]).max() <= 2  # half way between
    assert sorted(p.name for p in tmp_path.iterdir()) == ["half.png", "none.png", "s2.png"]


def test_generic_scene_path_matches_the_overview_path(tmp_path):
    scene, cover = open_geotiff(str(S2_STACK)), _landcover()
    for name, s in (("fast.png", scene), ("plain.png", PlainScene(scene))):
        write_quicklook(s, cover, tmp_path / name, max_size=600, **S2_OPTS)
    fast, plain = (np.asarray(Image.open(tmp_path / n)) for n in ("fast.png", "plain.png"))
    assert fast.shape == plain.shape == (300, 600, 3)
    assert (fast == plain).all(axis=2).mean() > 0.99


def test_nodata_collar_stays_black_and_small_scenes_are_not_upscaled(tmp_path):
    scene = open_geotiff(str(RGB_BYTE))
    invalid = scene.read_nodata(Box.from_shape(scene.spatial_shape))
    bright = scene.read(Box.from_shape(scene.spatial_shape))[0] > 80
    labels = np.where(invalid, 255, bright).astype(np.uint8)
    dest = tmp_path / "rgb.png"
    write_quicklook(scene, labels, dest, class_colors=[(0, 0, 255), (255, 255, 0)], max_size=1024)
    rgb = np.asarray(Image.open(dest))
    assert rgb.shape == (718, 791, 3)
    assert (rgb[invalid] == 0).all() and rgb[~invalid].any()


def test_three_views_of_a_brain_volume(tmp_path):
    need(MNI_T1, MNI_GM)
    nib = pytest.importorskip("nibabel")
    t1 = nib.load(MNI_T1)
    volume = np.asarray(t1.dataobj)[None]  # (1, X, Y, Z), RAS
    grey = (np.asarray(nib.load(MNI_GM).dataobj) > 128).astype(np.uint8)

    class Volume:
        uri, shape, dtype = str(MNI_T1), volume.shape, volume.dtype
        meta = VolumeMeta(affine=t1.affine, spacing=(1.0, 1.0, 1.0))
        spatial_shape = volume.shape[1:]

        def read(self, box, fill=0.0):
            return volume[(slice(None), *box.slices())]

        def read_nodata(self, box):
            return None

        def close(self):
            pass

    nx, ny, nz = volume.shape[1:]
    dest = tmp_path / "brain.png"
    write_quicklook(
        Volume(),
        grey,
        dest,
        class_colors=[(0, 0, 0), (255, 0, 0)],
        nodata=None,
        alpha=1.0,
        max_size=512,
        centre=(0.5, 0.5, 0.5),
    )
    image = Image.open(dest)
    assert image.size == (nx + nx + ny, max(ny, nz))  # side by side, none upscaled
    assert (0, 0, 0) in _colors_in(dest) and (255, 0, 0) in _colors_in(dest)
    axial = np.asarray(Image.open(dest))[:ny, :nx]
    np.testing.assert_array_equal((axial == (255, 0, 0)).all(axis=2), grey[:, :, nz // 2].T[::-1] == 1)

    small = tmp_path / "small.png"
    write_quicklook(Volume(), grey, small, class_colors=[(0, 0, 0), (255, 0, 0)], max_size=100)
    assert Image.open(small).size[1] == 100  # three views by default, each fitting 100 px


class _Array3D:
    """A 3-D Scene over an in-memory (1, X, Y, Z) volume."""

    def __init__(self, volume, spacing):
        self.volume, self.uri, self.shape, self.dtype = volume, "mem", volume.shape, volume.dtype
        self.meta = VolumeMeta(affine=np.diag([*spacing, 1.0]), spacing=spacing)
        self.spatial_shape = volume.shape[1:]

    def read(self, box, fill=0.0):
        return self.volume[(slice(None), *box.slices())]

    def read_nodata(self, box):
        return None

    def close(self):
        pass


def _red_per_view(png, widths):
    red = (np.asarray(Image.open(png).convert("RGB")) == (255, 0, 0)).all(axis=2)
    edges = np.cumsum([0, *widths])
    return [int(red[:, a:b].sum()) for a, b in itertools.pairwise(edges)]


def test_three_views_cross_at_the_labels_centre_of_mass(tmp_path):
    """The gallbladder of the TotalSegmentator CT lies in none of the three middle slices; the views
    through its centre of mass show it in all three, from the full labels or a decimated copy."""
    need(CT, CT_SEG)
    nib = pytest.importorskip("nibabel")
    from scipy import ndimage

    ct = np.asarray(nib.load(CT).dataobj)[None]
    gallbladder = (np.asarray(nib.load(CT_SEG).dataobj) == 4).astype(np.uint8)
    scene, (nx, ny, _) = _Array3D(ct, (3.0, 3.0, 3.0)), gallbladder.shape
    opts = {"class_colors": [(0, 0, 0, 0), (255, 0, 0)], "alpha": 1.0, "nodata": None}
    widths = (nx, nx, ny)  # axial (X, Y), coronal (X, Z), sagittal (Y, Z); nothing is rescaled

    middle = tmp_path / "middle.png"
    write_quicklook(scene, gallbladder, middle, centre=(0.5, 0.5, 0.5), **opts)
    assert _red_per_view(middle, widths) == [0, 0, 0]

    full = tmp_path / "full.png"
    write_quicklook(scene, gallbladder, full, **opts)
    com = ndimage.center_of_mass(gallbladder)
    at = [min(n - 1, int(f * n)) for f, n in zip(label_centre(gallbladder, None), gallbladder.shape)]
    assert at == [round(c) for c in com]
    expected = [gallbladder[:, :, at[2]].sum(), gallbladder[:, at[1], :].sum(), gallbladder[at[0]].sum()]
    assert _red_per_view(full, widths) == [int(e) for e in expected] and min(expected) > 20

    decimated = tmp_path / "decimated.png"
    write_quicklook(scene, gallbladder[::2, ::2, ::2], decimated, **opts)
    painted = _red_per_view(decimated, widths)
    assert all(p > 20 for p in painted)
    assert Image.open(decimated).size == Image.open(full).size


def test_shape_mismatch_and_existing_output(tmp_path):
    scene = open_geotiff(str(S2_STACK))
    for wrong in (np.zeros((10, 10, 2), np.uint8), np.zeros((769, 1536), np.uint8)):
        with pytest.raises(InputError, match="shape"):
            write_quicklook(scene, wrong, tmp_path / "x.png", class_colors=[(0, 0, 0)])
    dest = tmp_path / "x.png"
    dest.write_bytes(b"old")
    with pytest.raises(OutputError):
        write_quicklook(scene, _landcover(), dest, class_colors=COVER_COLORS)
    assert dest.read_bytes() == b"old"
    write_quicklook(scene, _landcover(), dest, class_colors=COVER_COLORS, overwrite=True, max_size=64)
    assert Image.open(dest).size == (64, 32)


class _Ramp:
    """A 2-D scene whose columns ramp from dark to bright, so blends differ from the base everywhere."""

    uri, shape, dtype, meta = "ramp", (1, 8, 8), np.dtype(np.uint8), None
    spatial_shape = (8, 8)

    def read(self, box, fill=0.0):
        return np.broadcast_to(np.arange(box.start[1], box.stop[1], dtype=np.uint8) * 30, (1, *box.shape))

    def read_nodata(self, box):
        return None

    def close(self):
        pass


def test_colours_take_every_spelling_and_their_alpha_scales_the_blend(tmp_path):
    labels = np.repeat(np.arange(4, dtype=np.uint8), 16).reshape(8, 8)  # two rows per class
    write_quicklook(_Ramp(), labels, tmp_path / "base.png", class_colors=[], nodata=None)
    base = np.asarray(Image.open(tmp_path / "base.png").convert("RGB")).astype(float)
    colors = ["#ff000000", "blue", (0, 255, 0, 128), None]  # clear, opaque, half, default for class 3
    write_quicklook(_Ramp(), labels, tmp_path / "a.png", class_colors=colors, alpha=1.0, nodata=None)
    got = np.asarray(Image.open(tmp_path / "a.png").convert("RGB")).astype(float)
    assert len(np.unique(base[0, :, 0])) > 1
    np.testing.assert_array_equal(got[:2], base[:2])  # alpha 0: unpainted, whatever its rgb
    assert (got[2:4] == (0, 0, 255)).all()
    w = 128 / 255
    np.testing.assert_array_equal(got[4:6], np.rint((1 - w) * base[4:6] + w * np.array([0, 255, 0])))
    assert (got[6:8] == (118, 183, 178)).all()  # class 3's default colour, Tableau's #76b7b2


def _blend_in_float(base, labels, colors, alpha, nodata):
    """The overlay as it was written before its table: the image blended in float64, pixel by pixel."""
    lut, weight = np.zeros((256, 3)), np.zeros(256)
    for k, rgba in enumerate(parse_color(c, index=i) for i, c in enumerate(colors[:256])):
        lut[k], weight[k] = rgba[:3], alpha * rgba[3] / 255
    if nodata is not None and 0 <= nodata < 256:
        weight[nodata] = 0.0
    ids = np.clip(labels.astype(np.int64), 0, 255)
    hit = (weight[ids] > 0) & (labels >= 0) & (labels < 256)
    w = weight[ids[hit]][:, None]
    out = base.astype(np.float64)
    out[hit] = (1.0 - w) * out[hit] + w * lut[ids[hit]]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def test_the_overlay_table_gives_the_float_blend_byte_for_byte():
    rng = np.random.default_rng(0)
    for trial in range(24):
        n = int(rng.integers(1, 300))
        colors = ["#{:02x}{:02x}{:02x}{:02x}".format(*rng.integers(0, 256, 4)) for _ in range(n)]
        base = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
        labels = rng.integers(-3, n + 3, (40, 50)).astype([np.int16, np.int32, np.float32][trial % 3])
        if trial % 4 == 0:
            labels = np.clip(labels, 0, 255).astype(np.uint8)
        alpha, nodata = float(rng.uniform(0, 1)), [None, 255, 0][trial % 3]
        expected = _blend_in_float(base, labels, colors, alpha, nodata)
        np.testing.assert_array_equal(_overlay(base, labels, colors, alpha, nodata), expected)
    every = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=2).repeat(5, axis=1)
    classes = np.tile(np.arange(5), (256, 1))  # every value under every class
    colors = ["#ff000080", "#00ff00", "#0000ff40", "#123456", "#fedcba"]
    for alpha in (0.0, 0.3, 0.5, 1.0):
        expected = _blend_in_float(every, classes, colors, alpha, 255)
        np.testing.assert_array_equal(_overlay(every, classes, colors, alpha, 255), expected)

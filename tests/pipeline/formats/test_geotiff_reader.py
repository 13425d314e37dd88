"""GeoTiffScene on the real sample rasters: shapes, georeferencing, padded reads, nodata, errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import rasterio
from affine import Affine

from pipeline.core.box import Box
from pipeline.errors import FormatError, InputError
from pipeline.formats.geotiff import GeoTiffScene, gdal_path, open_geotiff
from pipeline.formats.kinds import is_gdal_raster
from pipeline.formats.scene import Scene
from tests.pipeline.formats.sample_data import (
    MS1_FLOAT,
    PAN_ATLANTA,
    PAN_VEGAS_4326,
    RGB_BYTE,
    RGB_TENTH,
    S2_STACK,
    requires_data,
)

pytestmark = requires_data


def _direct(path, bands=None):
    with rasterio.open(path) as src:
        return src.read(bands)


def test_rgb_byte_shape_meta_and_protocol():
    with open_geotiff(str(RGB_BYTE)) as scene:
        assert isinstance(scene, Scene)
        assert scene.shape == (3, 718, 791) and scene.spatial_shape == (718, 791)
        assert scene.dtype == np.uint8
        assert scene.meta.crs.to_epsg() == 32618
        assert scene.meta.nodata == 0
        expected = Affine(300.0379266750948, 0.0, 101985.0, 0.0, -300.041782729805, 2826915.0)
        assert scene.meta.transform == expected
        assert scene.meta.gsd == pytest.approx((300.041782729805, 300.0379266750948))
        assert scene.meta.tags["AREA_OR_POINT"] == "Area"
        full = scene.read(Box.from_shape(scene.spatial_shape))
        np.testing.assert_array_equal(full, _direct(RGB_BYTE))


def test_rgb_byte_collar_is_nodata_and_padded_reads_fill():
    scene = open_geotiff(str(RGB_BYTE))
    data = _direct(RGB_BYTE)
    whole = scene.read_nodata(Box.from_shape(scene.spatial_shape))
    np.testing.assert_array_equal(whole, (data == 0).all(axis=0))
    assert whole[0, 0] and whole[-1, -1] and not whole[359, 395]  # collar corners, scene centre
    assert 0.1 < whole.mean() < 0.5

    box = Box((-10, 780), (20, 800))  # leaves the top and the right edge
    out = scene.read(box, fill=7)
    assert out.shape == (3, 30, 20)
    assert (out[:, :10] == 7).all() and (out[:, :, 11:] == 7).all()
    np.testing.assert_array_equal(out[:, 10:, :11], data[:, :20, 780:791])
    mask = scene.read_nodata(box)
    assert mask.shape == (30, 20) and mask[:10].all() and mask[:, 11:].all()

    far = Box((-500, -500), (-490, -480))
    assert (scene.read(far, fill=3) == 3).all() and scene.read_nodata(far).all()
    scene.close()


def test_sample_geotiff_uint16_nodata_zero():
    scene = open_geotiff(str(PAN_ATLANTA))
    assert scene.shape == (1, 900, 900) and scene.dtype == np.uint16
    assert scene.meta.nodata == 0 and scene.meta.crs.to_epsg() == 32616
    assert scene.meta.gsd == (0.5, 0.5)
    data = _direct(PAN_ATLANTA)
    box = Box((0, 0), (900, 900))
    np.testing.assert_array_equal(scene.read_nodata(box), data[0] == 0)
    np.testing.assert_array_equal(scene.read(Box((100, 200), (164, 300))), data[:, 100:164, 200:300])


def test_road_mask_input_epsg4326_has_no_nodata_concept():
    scene = open_geotiff(str(PAN_VEGAS_4326))
    assert scene.meta.crs.to_epsg() == 4326
    assert scene.meta.gsd == pytest.approx((2.7e-6, 2.7e-6))
    assert scene.read_nodata(Box((0, 0), (10, 10))) is None  # uint16, no nodata value, no mask
    assert scene.read(Box((0, 0), (13, 7))).shape == (1, 13, 7)


def test_sentinel2_band_selection_is_one_based_and_ordered():
    scene = open_geotiff(str(S2_STACK), bands=[4, 3, 2])
    assert scene.shape == (3, 768, 1536) and scene.dtype == np.uint16
    assert scene.meta.crs.to_epsg() == 32633
    box = Box((300, 700), (420, 900))
    expected = _direct(S2_STACK, [4, 3, 2])[:, 300:420, 700:900]
    np.testing.assert_array_equal(scene.read(box), expected)
    assert scene.read_nodata(box) is None
    for bad in ([5], [0], []):
        with pytest.raises(InputError, match=r"1\.\.4"):
            open_geotiff(str(S2_STACK), bands=bad)


def test_rotated_transform_is_kept_as_is(tmp_path):
    with rasterio.open(RGB_TENTH) as src:
        profile, data = src.profile, src.read()
        t = src.transform
        rotated = Affine.rotation(30.0, pivot=(t.c, t.f)) @ t  # about the top-left corner
    profile.update(transform=rotated)
    path = tmp_path / "rotated.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    scene = open_geotiff(str(path))
    assert scene.meta.transform.almost_equals(rotated, precision=1e-9)
    assert scene.meta.gsd == pytest.approx((3034.225352112676, 3004.1772151898736))
    np.testing.assert_array_equal(scene.read(Box((0, 0), (71, 79))), data)


def test_vrt_over_a_real_file_reads_the_same_pixels(tmp_path):
    with rasterio.open(PAN_ATLANTA) as src:
        crs_wkt, t = src.crs.to_wkt(), src.transform
    x0, y0, w, h = 100, 200, 500, 400
    origin = t @ Affine.translation(x0, y0)
    vrt = tmp_path / "subset.vrt"
    vrt.write_text(
        f"""<VRTDataset rasterXSize="{w}" rasterYSize="{h}">
  <SRS>{crs_wkt.replace('"', "&quot;")}</SRS>
  <GeoTransform>{", ".join(repr(v) for v in origin.to_gdal())}</GeoTransform>
  <VRTRasterBand dataType="UInt16" band="1">
    <NoDataValue>0</NoDataValue>
    <SimpleSource>
      <SourceFilename relativeToVRT="0">{PAN_ATLANTA}</SourceFilename>
      <SourceBand>1</SourceBand>
      <SrcRect xOff="{x0}" yOff="{y0}" xSize="{w}" ySize="{h}"/>
      <DstRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>
    </SimpleSource>
  </VRTRasterBand>
</VRTDataset>"""
    )
    assert is_gdal_raster(vrt)
    direct = open_geotiff(str(PAN_ATLANTA))
    scene = open_geotiff(str(vrt))
    assert scene.shape == (1, h, w) and scene.meta.crs == direct.meta.crs
    assert scene.meta.transform.almost_equals(origin, precision=1e-9)
    inside = direct.read(Box((210, 120), (290, 230)))
    np.testing.assert_array_equal(scene.read(Box((10, 20), (90, 130))), inside)
    padded = scene.read(Box((-5, 480), (40, 520)), fill=9)  # out of the VRT at the top and right
    np.testing.assert_array_equal(padded[:, 5:, :20], direct.read(Box((200, 580), (240, 600))))
    assert (padded[:, :5] == 9).all() and (padded[:, :, 20:] == 9).all()
    np.testing.assert_array_equal(
        scene.read_nodata(Box((0, 0), (h, w))), direct.read_nodata(Box((y0, x0), (y0 + h, x0 + w)))
    )


def test_float_nans_are_nodata(tmp_path):
    path = tmp_path / "ms1_nan.tif"
    with rasterio.open(MS1_FLOAT) as src:
        profile, data = src.profile, src.read()
    data[:, 10, 20:30] = np.nan  # every band
    data[2, 50, 60] = np.nan  # one band only: still unusable as model input
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    scene = open_geotiff(str(path))
    assert scene.dtype == np.float64 and scene.meta.nodata is None
    mask = scene.read_nodata(Box((0, 0), (300, 300)))
    expected = np.zeros((300, 300), bool)
    expected[10, 20:30] = expected[50, 60] = True
    np.testing.assert_array_equal(mask, expected)
    assert not open_geotiff(str(MS1_FLOAT)).read_nodata(Box((0, 0), (300, 300))).any()


@pytest.mark.parametrize("internal", [True, False], ids=["internal-mask", "sidecar-msk"])
def test_mask_band_is_nodata(tmp_path, internal):
    with rasterio.open(RGB_TENTH) as src:
        profile, data = src.profile, src.read()
    profile.update(nodata=None)
    valid = np.ones((71, 79), dtype=bool)
    valid[20:30, 40:60] = False
    path = tmp_path / "masked.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=internal), rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.write_mask(valid)
    assert (tmp_path / "masked.tif.msk").exists() != internal
    scene = open_geotiff(str(path))
    assert scene.meta.nodata is None
    np.testing.assert_array_equal(scene.read_nodata(Box((-1, 0), (71, 79)))[1:], ~valid)
    assert scene.read_nodata(Box((-1, 0), (0, 79))).all()


def test_pickle_drops_the_handle_and_reopens_lazily():
    scene = open_geotiff(str(S2_STACK), bands=[3])
    box = Box((-2, 1530), (30, 1540))
    before = scene.read(box, fill=5)
    clone = pickle.loads(pickle.dumps(scene))
    assert isinstance(clone, GeoTiffScene) and clone._ds is None
    np.testing.assert_array_equal(clone.read(box, fill=5), before)
    assert clone.shape == scene.shape and clone.meta.transform == scene.meta.transform
    scene.close()
    np.testing.assert_array_equal(scene.read(box, fill=5), before)  # reopened after close too


def test_read_overview_fits_max_size():
    scene = open_geotiff(str(S2_STACK))
    small = scene.read_overview(256)
    assert small.shape == (4, 128, 256) and small.dtype == np.uint16
    assert scene.read_overview(4096).shape == (4, 768, 1536)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("not an image, just text\n"), "not a raster"),
        (lambda p: p.write_bytes(RGB_BYTE.read_bytes()[: RGB_BYTE.stat().st_size // 2]), "corrupt"),
        (lambda p: p.write_bytes(PAN_ATLANTA.read_bytes()[:900_000]), "truncated"),  # IFD first, strips cut
    ],
    ids=["zero-byte", "text", "truncated-ifd-at-end", "truncated-strips"],
)
def test_broken_files_raise_format_error_with_the_path(tmp_path, make, reason):
    path = tmp_path / "broken.tif"
    make(path)
    with pytest.raises(FormatError, match=reason) as info:
        open_geotiff(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_file_and_folder_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="not found") as info:
        open_geotiff(str(tmp_path / "nope.tif"))
    assert str(tmp_path / "nope.tif") in str(info.value)
    with pytest.raises(InputError, match="folder"):
        open_geotiff(str(tmp_path))


def test_uri_mapping():
    assert gdal_path("s3://bucket/a/b.tif") == "/vsis3/bucket/a/b.tif"
    assert gdal_path("/vsis3/bucket/a/b.tif") == "/vsis3/bucket/a/b.tif"
    assert gdal_path("gs://b/k.tif") == "/vsigs/b/k.tif"
    assert gdal_path("https://h/x.tif") == "/vsicurl/https://h/x.tif"
    assert gdal_path("file:///data/x.tif") == "/data/x.tif"
    with pytest.raises(InputError):
        gdal_path("ftp://h/x.tif")


def test_s3_uri_through_moto(tmp_path, monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
        endpoint = f"http://{host}:{port}"
        lower = {k.lower(): v for k, v in keys.items()}
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **lower)
        s3.create_bucket(Bucket="scenes")
        s3.upload_file(str(RGB_TENTH), "scenes", "landsat/tenth.tif")
        for key, value in {
            **keys,
            "AWS_S3_ENDPOINT": f"{host}:{port}",
            "AWS_VIRTUAL_HOSTING": "FALSE",
            "AWS_HTTPS": "NO",
            "AWS_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(key, value)
        scene = open_geotiff("s3://scenes/landsat/tenth.tif")
        assert scene.path == "/vsis3/scenes/landsat/tenth.tif"
        np.testing.assert_array_equal(scene.read(Box((0, 0), (71, 79))), _direct(RGB_TENTH))
        clone = pickle.loads(pickle.dumps(scene))
        assert clone.read(Box((5, 5), (6, 6))).shape == (3, 1, 1)
        with pytest.raises(InputError, match="not found"):
            open_geotiff("s3://scenes/landsat/missing.tif")
    finally:
        server.stop()

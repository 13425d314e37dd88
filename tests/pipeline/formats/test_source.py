"""The scene source: a small picklable recipe that opens the right reader on any worker."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.errors import FormatError
from pipeline.formats.geotiff import GeoTiffScene
from pipeline.formats.kinds import kind_of as registry_kind_of
from pipeline.formats.nifti_reader import NiftiScene
from pipeline.formats.resample import ResampledGeoScene
from pipeline.formats.source import SceneSource, kind_of, open_source
from pipeline.formats.zarr_reader import ZarrScene
from tests.pipeline.formats.sample_data import CT, RGB_BYTE, requires_data, whole


@requires_data
def test_each_kind_opens_its_reader_and_the_recipe_pickles(tmp_path: Path) -> None:
    zarr.create_array(store=str(tmp_path / "v.zarr"), shape=(4, 6), dtype="u1", chunks=(2, 3))[:] = 3
    cases = [
        (SceneSource("geotiff", (str(RGB_BYTE),)), GeoTiffScene),
        (SceneSource("geotiff", (str(RGB_BYTE),), (("target_gsd", (1000.0, 1000.0)),)), ResampledGeoScene),
        (SceneSource("nifti", (str(CT),), (("orientation", "LPS"),)), NiftiScene),
        (SceneSource("zarr", (str(tmp_path / "v.zarr"),)), ZarrScene),
    ]
    for source, cls in cases:
        again = pickle.loads(pickle.dumps(source))
        assert again == source and again.uri == source.uris[0] and again.kind == kind_of(source.uri)
        scene = again.open()
        assert isinstance(scene, cls)
        scene.close()
    assert (whole(open_source(cases[3][0])) == 3).all()
    native = open_source(cases[0][0])
    coarse = open_source(cases[1][0])
    assert coarse.spatial_shape[0] < native.spatial_shape[0] and coarse.shape[0] == native.shape[0] == 3


def test_nifti_channel_sets_open_as_one_scene(tmp_path: Path) -> None:
    import nibabel as nib

    paths = []
    for c in range(2):
        paths.append(str(tmp_path / f"case_{c:04d}.nii.gz"))
        nib.save(nib.Nifti1Image(np.full((3, 4, 5), c, np.int16), np.eye(4)), paths[-1])
    scene = SceneSource("nifti", tuple(paths)).open()
    assert scene.shape == (2, 3, 4, 5) and [int(v.max()) for v in whole(scene)] == [0, 1]


def test_unknown_kind_names_the_file() -> None:
    with pytest.raises(FormatError, match="no reader for scene kind 'png'") as err:
        open_source(SceneSource("png", ("/data/x.png",)))
    assert "/data/x.png" in str(err.value)
    assert kind_of is registry_kind_of  # one registry, re-exported where sources are made


def test_importing_the_source_loads_no_reader() -> None:
    code = (
        "import sys, pipeline.formats.source\n"
        "heavy = {'rasterio', 'nibabel', 'zarr', 'torch'} & set(sys.modules)\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

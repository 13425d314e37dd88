"""ONNX models as ``--model``: an exported bundle is one self-describing file; a foreign file is
described from its shapes; what does not fit is refused in one line naming the file. Runs on a real
raster give the labels of the torch bundle."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml

from models.bundle import load_bundle
from models.bundle.onnx import METADATA_KEY, export_onnx
from models.bundle.sources import model_kind, open_model
from pipeline import infer_array
from pipeline.errors import BundleError, OutputError
from pipeline.job.config import load_config
from pipeline.job.skeleton import run_job

SCENE = "geo/rasterio/rgb-byte-tenth.tif"  # 3 x 79 x 71, CC0


@pytest.fixture(scope="module")
def bundle(bundle_factory):
    return load_bundle(bundle_factory(2, 3, ["land", "water", "cloud"], 32, [4, 8]))


@pytest.fixture(scope="module")
def exported(bundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(bundle, tmp_path_factory.mktemp("onnx") / "s2.onnx")


def test_an_exported_file_carries_the_whole_bundle(bundle, exported: Path) -> None:
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}  # valid ONNX for onnx itself
    assert yaml.safe_load(meta[METADATA_KEY])["classes"][1]["name"] == "water"
    assert model_kind(exported) == "onnx"
    ours = open_model(exported)
    assert ours.kind == "onnx" and ours.config.architecture["name"] == "onnx"
    same = ("inputs", "patch_size", "overlap", "classes", "output_activation", "spatial_dims")
    assert ours.config.model_dump(include=set(same)) == bundle.config.model_dump(include=set(same))
    with pytest.raises(OutputError, match="exists"):
        export_onnx(bundle, exported)


def test_the_first_build_runs_the_session_that_read_the_metadata(bundle, exported: Path) -> None:
    loaded = open_model(exported)
    opened = loaded._opened
    assert opened is not None and pickle.loads(pickle.dumps(loaded))._opened is None
    first, second = loaded.build(), loaded.build()
    assert first is opened and second.session is not opened.session  # reused once, then new ones
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(first(x), second(x))
    torch.testing.assert_close(first(x), bundle.build()(x), atol=1e-4, rtol=0)


def test_onnx_scores_on_a_real_raster_equal_torch_and_the_job_gives_the_same_labels(
    bundle, exported: Path, data: Path, tmp_path: Path
) -> None:
    with rasterio.open(data / SCENE) as src:
        image = (src.read().astype(np.float32) - 100.0) / 50.0
    kw = {"patch_size": [32, 32], "overlap": 0.25}
    ours = infer_array(image, open_model(exported).build(), **kw)
    torch_scores = infer_array(image, bundle.build(), **kw)
    np.testing.assert_allclose(ours, torch_scores, atol=1e-4, rtol=0)

    labels = {}
    for name, model in (("torch", bundle.path), ("onnx", exported)):
        config = load_config(
            None, {"input": str(data / SCENE), "output": str(tmp_path / name), "model": str(model)}
        )
        (result,) = run_job(config)
        assert result.status == "ok", result.reason
        with rasterio.open(result.outputs["labels"]) as src:
            labels[name] = src.read(1)
    np.testing.assert_array_equal(labels["onnx"], labels["torch"])


def test_a_foreign_file_is_described_from_its_static_shapes(bundle, tmp_path: Path) -> None:
    net = bundle.build()
    fixed, dynamic = tmp_path / "fixed.onnx", tmp_path / "dynamic.onnx"
    x = torch.zeros(1, 3, 32, 32)
    torch.onnx.export(net, (x,), str(fixed), dynamo=False)
    found = open_model(fixed)
    assert found.config.patch_size == [32, 32] and found.class_names == ["class_0", "class_1", "class_2"]
    assert found.config.inputs.channels == ["ch1", "ch2", "ch3"]
    torch.onnx.export(
        net, (x,), str(dynamic), dynamo=False, input_names=["x"], dynamic_axes={"x": {2: "h", 3: "w"}}
    )
    with pytest.raises(
        BundleError, match=r"dynamic\.onnx: .*dynamic and the file carries no tilewise config"
    ):
        open_model(dynamic)


def test_a_bundle_folder_naming_an_onnx_file_is_checked_against_it(
    bundle, exported: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "wrapped"
    folder.mkdir()
    shutil.copy(exported, folder / "net.onnx")
    data = yaml.safe_load((bundle.path / "model.yaml").read_text())
    data["architecture"] = {
        "name": "onnx",
        "path": "net.onnx",
        "in_channels": 3,
        "out_channels": 3,
        "spatial_dims": 2,
    }
    (folder / "model.yaml").write_text(yaml.safe_dump(data))
    assert open_model(folder).build()(torch.zeros(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    data["architecture"]["in_channels"] = 4
    data["inputs"]["channels"] = ["a", "b", "c", "d"]
    data["inputs"]["normalization"] = {"kind": "none"}
    (folder / "model.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(BundleError, match=r"net\.onnx: the model has 3 channels but its bundle lists 4"):
        open_model(folder)
    (folder / "net.onnx").unlink()
    with pytest.raises(BundleError, match=r"net\.onnx: model archive not found"):
        open_model(folder)

"""ONNX Runtime behind the net call: equal to the torch forward within 1e-4, whatever the batch dimension."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.bundle import load_bundle
from models.bundle.onnx import export_onnx
from models.nets.onnx import OnnxNet, providers
from pipeline.errors import BundleError


@pytest.fixture(scope="module")
def bundle(bundle_factory):
    return load_bundle(bundle_factory(2, 3, ["land", "water"], 32, [4, 8]))


@pytest.mark.parametrize("batch", [None, 1, 2])
def test_scores_equal_the_torch_forward_for_dynamic_and_fixed_batches(
    bundle, tmp_path: Path, batch: int | None
) -> None:
    path = export_onnx(bundle, tmp_path / "m.onnx", batch=batch)
    net = OnnxNet(path.read_bytes(), where=str(path))
    assert net.fixed_batch == batch  # None: dynamic
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        expected = bundle.build()(x).numpy()
    got = net(x).numpy()  # 3 windows: one call, or 3 runs of 1, or 2 + 1 padded to 2
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_cpu_unless_a_gpu_and_onnxruntime_gpu_are_both_there() -> None:
    assert providers("cpu") == ["CPUExecutionProvider"]
    wanted = providers("cuda")
    assert wanted[-1] == "CPUExecutionProvider"
    import onnxruntime as ort

    assert ("CUDAExecutionProvider" in wanted) == ("CUDAExecutionProvider" in ort.get_available_providers())


def test_a_file_that_is_not_onnx_is_one_line_naming_it(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"bad\.onnx: not a model ONNX Runtime can run: ") as err:
        OnnxNet(b"not a protobuf at all", where=str(tmp_path / "bad.onnx"))
    assert "\n" not in str(err.value)

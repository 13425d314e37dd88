"""`tilewise bundle info / import monai / export --onnx` and `plan` on models as their users keep them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from flows.cli.app import app
from models.bundle import load_bundle
from models.bundle.sources import open_model
from tests.models.bundle.monai_bundle.test_load import make


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def monai_dir(tmp_path: Path) -> Path:
    return make(tmp_path)


def test_info_describes_a_monai_bundle(monai_dir: Path) -> None:
    res = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["bundle", "info", str(monai_dir)])
    assert res.exit_code == 0, res.output
    out = flat(res.output)
    expected_rows = (
        "kind │ monai",
        "patch size │ 48 x 48 x 16",
        "ct_window",
        "softmax (of the blended scores)",
    )
    for expected in (*expected_rows, "kidney", open_model(monai_dir).hash, '"blend": "gaussian"'):
        assert expected in out, expected


def test_import_then_export_keep_the_network_and_everything_around_it(
    monai_dir: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["bundle", "import", "monai", str(monai_dir), "--out", str(tmp_path / "tw")])
    assert res.exit_code == 0, res.output
    imported, direct = load_bundle(tmp_path / "tw"), open_model(monai_dir)
    keep = {"inputs", "patch_size", "overlap", "blend", "classes", "output_activation", "activation_stage"}
    assert imported.config.model_dump(include=keep) == direct.config.model_dump(include=keep)
    x = torch.randn(1, 1, 48, 48, 16)
    with torch.no_grad():
        np.testing.assert_array_equal(imported.build()(x).numpy(), direct.build()(x).numpy())
    res = runner.invoke(app, ["bundle", "export", str(tmp_path / "tw"), "--onnx", str(tmp_path / "m.onnx")])
    assert res.exit_code == 0, res.output
    onnx = open_model(tmp_path / "m.onnx")
    assert onnx.config.model_dump(include=keep) == direct.config.model_dump(include=keep)
    with torch.no_grad():
        np.testing.assert_allclose(onnx.build()(x).numpy(), direct.build()(x).numpy(), atol=1e-4, rtol=0)
    again = runner.invoke(app, ["bundle", "import", "monai", str(monai_dir), "--out", str(tmp_path / "tw")])
    assert again.exit_code != 0 and "exists; pass --overwrite" in again.output


def test_bad_models_fail_in_one_line_without_a_traceback(monai_dir: Path, tmp_path: Path, data: Path) -> None:
    (monai_dir / "models" / "model.pt").unlink()
    runner = CliRunner()
    scene = data / "medical/totalsegmentator/example_ct_sm.nii.gz"
    for args in (["bundle", "info", str(monai_dir)], ["plan", str(scene), "--model", str(monai_dir)]):
        res = runner.invoke(app, args)
        assert res.exit_code != 0
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "no weights: expected one of models/model.pt" in lines[0], res.output
        assert "Traceback" not in res.output


def test_plan_takes_the_monai_folder_directly(monai_dir: Path, data: Path) -> None:
    scene = data / "medical/totalsegmentator/example_ct_sm.nii.gz"
    res = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["plan", str(scene), "--model", str(monai_dir)])
    assert res.exit_code == 0, res.output
    assert "122x101x30" in flat(res.output).replace(" ", "") and "48x48x16" in flat(res.output).replace(
        " ", ""
    )

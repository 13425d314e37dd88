"""nnU-Net checkpoints are pickles: read without running arbitrary code unless the user trusts them."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from models.bundle import load_bundle
from models.bundle.nnunet.checkpoint import load_checkpoint
from models.bundle.sources import open_model
from pipeline.errors import BundleError


class Payload:
    """Stands for any class a pickle may name: unpickling it would import and run its module's code."""

    def __reduce__(self):
        return (Payload, ())


def test_real_checkpoint_loads_with_weights_only_and_the_allow_list(model3d):
    ckpt, digest = load_checkpoint(model3d / "fold_0" / "checkpoint_final.pth")
    assert ckpt["init_args"]["configuration"] == "3d_fullres"
    assert all(isinstance(v, torch.Tensor) for v in ckpt["network_weights"].values())
    assert len(digest) == 64


def test_foreign_class_needs_trust_pickle(model3d, tmp_path):
    ckpt, _ = load_checkpoint(model3d / "fold_0" / "checkpoint_final.pth")
    ckpt["logging"] = {"extra": Payload()}
    path = tmp_path / "checkpoint_final.pth"
    torch.save(ckpt, path)
    with pytest.raises(BundleError, match=r"needs full unpickling .* --trust-pickle") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    trusted, _ = load_checkpoint(path, trust_pickle=True)
    assert isinstance(trusted["logging"]["extra"], Payload)


def test_truncated_checkpoint_is_one_clear_error(tmp_path, model3d):
    path = tmp_path / "checkpoint_final.pth"
    path.write_bytes((model3d / "fold_0" / "checkpoint_final.pth").read_bytes()[:5000])
    with pytest.raises(BundleError, match=r"not a readable torch checkpoint"):
        load_checkpoint(path)


def test_import_writes_safetensors_that_run_as_the_folder(model3d, tmp_path):
    from typer.testing import CliRunner

    from flows.cli.app import app

    out = tmp_path / "bundle"
    res = CliRunner().invoke(
        app, ["bundle", "import", "nnunet", str(model3d), "--out", str(out), "--folds", "0,1"]
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["model.yaml", "weights.safetensors"]
    imported = load_bundle(out)  # no pickle anywhere: load_bundle refuses .pth unless trusted
    folder = open_model(model3d, options={"folds": [0, 1]})
    assert imported.config == folder.config
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 1, 48, 48, 16)).astype(np.float32))
    with torch.inference_mode():
        np.testing.assert_array_equal(imported.build()(x).numpy(), folder.build()(x).numpy())
    shutil.rmtree(out)

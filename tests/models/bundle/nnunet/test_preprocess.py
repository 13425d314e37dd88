"""nnU-Net's preprocessing, held to nnU-Net's own ``DefaultPreprocessor`` on real MR volumes.

The crop to the non-zero box and every normalisation scheme of ``plans.json`` (the plans of the test
model, edited per scheme): tilewise's cropped scene, normalised as its blocks normalise it, must equal
the array nnU-Net would feed its network. The volumes' spacing is the plans', so nothing resamples.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from models.bundle.sources import open_model
from pipeline.core.box import Box
from pipeline.execution.preprocess import Preprocessor
from pipeline.execution.scene_passes import open_cropped
from pipeline.formats.source import SceneSource
from pipeline.job.scene_job import open_options
from tests.models.bundle.nnunet.cases import write_mr

SCHEMES = [
    pytest.param("ZScoreNormalization", False, id="zscore"),
    pytest.param("ZScoreNormalization", True, id="zscore-mask"),
    pytest.param("RescaleTo01Normalization", False, id="rescale01"),
    pytest.param("NoNormalization", False, id="none"),
    pytest.param("CTNormalization", False, id="ct"),
]


@pytest.fixture(scope="module")
def mr_cases(data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_mr(data, tmp_path_factory.mktemp("nnunet-mr"))


def with_scheme(model: Path, dst: Path, scheme: str, mask: bool) -> Path:
    """A copy of the model folder (fold 0) whose plans name ``scheme`` and ``use_mask_for_norm``."""
    dst = dst / model.parent.name / model.name
    (dst / "fold_0").mkdir(parents=True)
    shutil.copy(model / "dataset.json", dst / "dataset.json")
    shutil.copy(model / "fold_0" / "checkpoint_final.pth", dst / "fold_0" / "checkpoint_final.pth")
    plans = json.loads((model / "plans.json").read_text())
    for cfg in plans["configurations"].values():
        cfg.update(normalization_schemes=[scheme], use_mask_for_norm=[mask])
    (dst / "plans.json").write_text(json.dumps(plans))
    return dst


def nnunet_preprocessed(model: Path, case: Path | list[Path]) -> tuple[np.ndarray, list[list[int]]]:
    """nnU-Net's network input for ``case`` (or its channel files) in the file's (x, y, z) order, and its
    crop box (x, y, z)."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = PlansManager(json.loads((model / "plans.json").read_text()))
    dataset = json.loads((model / "dataset.json").read_text())
    config = plans.get_configuration(model.name.split("__")[-1])
    files = [str(f) for f in (case if isinstance(case, list) else [case])]
    data, _, props = DefaultPreprocessor(verbose=False).run_case(files, None, plans, config, dataset)
    return np.asarray(data).transpose(0, 3, 2, 1), props["bbox_used_for_cropping"][::-1]


def tilewise_preprocessed(
    model: Path, case: Path | list[Path], work: Path, bundle: Any = None
) -> tuple[np.ndarray, Box | None]:
    bundle = bundle or open_model(model, options={"folds": [0]})
    files = tuple(str(f) for f in (case if isinstance(case, list) else [case]))
    source = open_options(SceneSource("nifti", files), bundle, work)
    source, scene = open_cropped(source, bundle.config)
    try:
        pre = Preprocessor.from_bundle(bundle, scene)
        whole = Box.from_shape(scene.shape[1:])
        return pre(scene.read(whole), box=whole), scene.crop
    finally:
        scene.close()


@pytest.mark.parametrize(("scheme", "mask"), SCHEMES)
def test_cropped_and_normalised_as_nnunet(scheme, mask, model3d, mr_cases, tmp_path):
    model = with_scheme(model3d, tmp_path, scheme, mask)
    for case in mr_cases:
        theirs, bbox = nnunet_preprocessed(model, case)
        ours, crop = tilewise_preprocessed(model, case, tmp_path / "work")
        assert crop is not None, "the real MR volumes have zero borders: nnU-Net crops them"
        assert [list(v) for v in zip(crop.start, crop.stop, strict=True)] == [list(b) for b in bbox]
        assert ours.shape == theirs.shape, case.name
        scale = max(1.0, float(np.abs(theirs).max()))
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-6 * scale, err_msg=f"{scheme} {case.name}")


MIXED = [
    pytest.param(["CTNormalization", "ZScoreNormalization"], [False, True], id="ct+zscore-mask"),
    pytest.param(["ZScoreNormalization", "RescaleTo01Normalization"], [False, False], id="zscore+rescale01"),
]


@pytest.mark.parametrize(("schemes", "masks"), MIXED)
def test_mixed_schemes_normalise_each_channel_as_nnunet(schemes, masks, model3d, data, tmp_path):
    """Two channels with their own schemes (plans' ``normalization_schemes`` per channel): the real MNI
    T1 and a shifted copy, whose non-zero boxes and masks differ, so the crop and the "any channel
    non-zero" mask are both channels'."""
    import nibabel as nib

    from models.bundle.nnunet.convert import bundle_config
    from models.bundle.nnunet.folder import read_folder

    model = with_scheme(model3d, tmp_path, "ZScoreNormalization", False)
    plans = json.loads((model / "plans.json").read_text())
    plans["configurations"]["3d_fullres"].update(normalization_schemes=schemes, use_mask_for_norm=masks)
    props = plans["foreground_intensity_properties_per_channel"]  # nnU-Net asks for every channel's
    props["1"] = {k: v * 0.5 if isinstance(v, float) else v for k, v in props["0"].items()}
    (model / "plans.json").write_text(json.dumps(plans))
    dataset = json.loads((model / "dataset.json").read_text())
    dataset["channel_names"] = {"0": "A", "1": "B"}
    (model / "dataset.json").write_text(json.dumps(dataset))
    mni = nib.load(data / "medical" / "nilearn" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    x = np.ascontiguousarray(np.asanyarray(mni.dataobj)[::3, ::3, ::3]).astype(np.int16)
    shifted = np.zeros_like(x)  # the same head moved by a few voxels: its own non-zero box and mask
    shifted[5:, :-4, 2:] = x[:-5, 4:, :-2]
    files = [tmp_path / "mni_0000.nii.gz", tmp_path / "mni_0001.nii.gz"]
    affine = mni.affine.copy()
    affine[:3, :3] *= 3
    for f, v in zip(files, (x, shifted), strict=True):
        nib.save(nib.Nifti1Image(v, affine), f)
    # the network's weights do not matter here (one input channel): the plans' bundle config does
    cfg = bundle_config(read_folder(model, folds=[0]), {}, [])
    assert cfg.inputs.normalization.kind == "per_channel"
    theirs, bbox = nnunet_preprocessed(model, files)
    ours, crop = tilewise_preprocessed(model, files, tmp_path / "work", SimpleNamespace(config=cfg))
    assert crop is not None
    assert [list(v) for v in zip(crop.start, crop.stop, strict=True)] == [list(b) for b in bbox]
    assert ours.shape == theirs.shape == (2, *crop.shape)
    for c in range(2):
        scale = max(1.0, float(np.abs(theirs[c]).max()))
        np.testing.assert_allclose(ours[c], theirs[c], rtol=0, atol=2e-6 * scale, err_msg=f"{schemes[c]}")


def test_unknown_scheme_is_refused(model3d, tmp_path):
    from pipeline.errors import BundleError

    model = with_scheme(model3d, tmp_path, "ZScoreNormalization", False)
    plans = json.loads((model / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["normalization_schemes"] = ["MyOwnNormalization"]
    (model / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(BundleError, match=r"normalisation MyOwnNormalization is not supported") as err:
        open_model(model)
    assert str(model / "plans.json") in str(err.value)

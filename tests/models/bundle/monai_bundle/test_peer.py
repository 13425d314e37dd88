"""The same MONAI bundle, run by MONAI (``python -m monai.bundle run``) and by tilewise's job (the
skeleton ``tilewise run`` runs, without Prefect's start-up, which a busy 2-core CI machine cannot
afford twice), on unseen cases: identical labels, and scores within 1e-4, where no resampling is
involved. The CLI itself is exercised on MONAI folders in tests/flows/cli/test_bundle_io.py."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from models.bundle.sources import open_model
from pipeline import infer_array
from pipeline.core.box import Box
from pipeline.execution.preprocess import Preprocessor
from pipeline.formats.nifti_reader import open_nifti
from pipeline.job.config import load_config
from pipeline.job.skeleton import run_job
from tests.models.bundle.monai_bundle import zoo
from tests.models.bundle.monai_bundle.conftest import PATCH, ct_config, monai_run


def canonical(path: Path) -> np.ndarray:
    """A NIfTI's array in RAS, so outputs on different voxel grids of one scan compare voxel by voxel."""
    return np.asarray(nib.as_closest_canonical(nib.load(str(path))).dataobj)


def tilewise_scores(bundle_dir: Path, case: Path) -> np.ndarray:
    """tilewise's blended, activated scores on the engine grid (RAS here), through its own preprocessing."""
    bundle = open_model(bundle_dir)
    cfg = bundle.config
    scene = open_nifti(str(case), orientation=cfg.orientation, target_spacing=cfg.target_spacing)
    pre = Preprocessor.from_bundle(bundle, scene)
    x = pre(
        scene.read(Box.from_shape(scene.spatial_shape)),
        scene.read_nodata(Box.from_shape(scene.spatial_shape)),
    )
    logits = infer_array(
        x,
        bundle.build(),
        patch_size=cfg.patch_size,
        overlap=cfg.overlap,
        blend=cfg.blend,
        sigma_scale=cfg.sigma_scale,
        batch_size=cfg.batch_size,
    )
    return torch.softmax(torch.from_numpy(logits), 0).numpy()


@pytest.fixture(scope="module")
def ct_runs(ct_bundle: Path, ct_case: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    monai_out = monai_run(ct_bundle, ct_case, tmp_path_factory.mktemp("monai_ct"))
    ours = tmp_path_factory.mktemp("tilewise_ct")
    job = {"input": str(ct_case), "output": str(ours), "model": str(ct_bundle), "outputs.probabilities": True}
    (result,) = run_job(load_config(None, job))  # tilewise run's job skeleton, without Prefect's start-up
    assert result.status == "ok", result.reason
    return monai_out, ours


def test_ct_labels_are_identical_to_monai_bundle_run(ct_runs: tuple[Path, Path]) -> None:
    monai_out, ours = ct_runs
    theirs, mine = canonical(monai_out / "ct_seg.nii.gz"), canonical(ours / "ct_labels.nii.gz")
    assert theirs.shape == mine.shape
    assert len(np.unique(theirs)) >= 3  # the trained net finds organs, not one class everywhere
    np.testing.assert_array_equal(mine, theirs)


def test_ct_scores_equal_monai_within_1e_4(
    ct_runs: tuple[Path, Path], ct_bundle: Path, ct_case: Path
) -> None:
    monai_out, ours = ct_runs
    theirs = np.moveaxis(np.squeeze(canonical(monai_out / "ct_prob.nii.gz")), -1, 0)
    mine = tilewise_scores(ct_bundle, ct_case / "ct.nii.gz")
    assert mine.shape == theirs.shape
    np.testing.assert_allclose(mine, theirs, atol=1e-4, rtol=0)
    # the job's probability output is the same softmax of blended logits, quantised to uint8
    written = np.moveaxis(canonical(ours / "ct_probabilities.nii.gz"), -1, 0)  # uint8, slope 1/255
    assert np.abs(written - theirs).max() <= 0.5 / 255 + 1e-4


def test_mr_labels_identical_after_reorientation_zscore_and_largest_component(
    mr_bundle: Path, mr_case: Path, tmp_path: Path
) -> None:
    """An LPS scan, per-scene non-zero z-score and KeepLargestConnectedComponentd: still identical."""
    monai_out = monai_run(mr_bundle, mr_case, tmp_path / "monai")
    config = load_config(
        None, {"input": str(mr_case), "output": str(tmp_path / "ours"), "model": str(mr_bundle)}
    )
    (result,) = run_job(config)  # the job skeleton tilewise run uses, without Prefect's start-up
    assert result.status == "ok", result.reason
    theirs, mine = canonical(monai_out / "mr_seg.nii.gz"), canonical(tmp_path / "ours" / "mr_labels.nii.gz")
    assert len(np.unique(theirs)) >= 2
    np.testing.assert_array_equal(mine, theirs)
    probs = np.moveaxis(np.squeeze(canonical(monai_out / "mr_prob.nii.gz")), -1, 0)
    np.testing.assert_allclose(tilewise_scores(mr_bundle, mr_case / "mr.nii.gz"), probs, atol=1e-4, rtol=0)


SPACING = [2.5, 2.5, 2.0]  # the CT is 3 mm: finer in-plane, finer still across slices
SOFTMAX = {"_target_": "Activationsd", "keys": "pred", "softmax": True}
INVERTD = {
    "_target_": "Invertd",
    "keys": "pred",
    "transform": "@preprocessing",
    "orig_keys": "image",
    "nearest_interp": False,
    "to_tensor": True,
}
LABELS = [
    {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
    {"_target_": "KeepLargestConnectedComponentd", "keys": "pred", "applied_labels": [1, 2, 3]},
    zoo.save_image("seg", "uint8"),
]
ORDERS = {
    # the zoo's (spleen_ct_segmentation's): probabilities interpolated back, then the argmax
    "activation-then-invert": ([SOFTMAX, INVERTD], "blended"),
    # logits interpolated back, then the softmax on the scan's grid (probabilities saved from there)
    "invert-then-activation": ([INVERTD, SOFTMAX, zoo.save_image("prob", "float32")], "inverted"),
}


@pytest.mark.parametrize("order", list(ORDERS))
def test_ct_labels_agree_with_monai_through_spacingd_and_invertd(
    order: str, ct_state: dict, ct_case: Path, tmp_path: Path
) -> None:
    """The zoo's resampling path: Spacingd before the network, Invertd back to the scan's grid, the
    argmax, then the largest components on that grid. tilewise lays out MONAI's grid and inverts the
    same way (the scores interpolated, activated where the bundle activates them, then the argmax and
    the keep-largest rule), so the labels agree on every voxel (98.36 % before: its own grid and
    nearest labels back), whichever side of Invertd the activation is on."""
    post, stage = ORDERS[order]
    bundle = zoo.write_bundle(
        tmp_path / "b", "ct_spacing", ct_state, ct_config(spacing=SPACING, post=post + LABELS), PATCH
    )
    cfg = open_model(bundle).config
    assert (cfg.target_spacing, cfg.spacing_grid, cfg.invert) == (SPACING, "monai", "scores")
    assert cfg.activation_stage == stage
    monai_out = monai_run(bundle, ct_case, tmp_path / "monai")
    job = {"input": str(ct_case), "output": str(tmp_path / "ours"), "model": str(bundle)}
    (result,) = run_job(load_config(None, {**job, "outputs.probabilities": True}))
    assert result.status == "ok", result.reason
    theirs, mine = canonical(monai_out / "ct_seg.nii.gz"), canonical(tmp_path / "ours" / "ct_labels.nii.gz")
    assert theirs.shape == mine.shape == nib.load(str(ct_case / "ct.nii.gz")).shape
    assert len(np.unique(theirs)) >= 3
    agreement = (mine == theirs).mean()
    assert agreement >= 0.9995, f"{agreement:.5%}"
    np.testing.assert_array_equal(mine, theirs)
    if stage == "inverted":  # MONAI's probabilities on the scan's grid: the softmax of interpolated logits,
        # which interpolated probabilities miss by up to ~0.1 at class borders
        probs = np.moveaxis(np.squeeze(canonical(monai_out / "ct_prob.nii.gz")), -1, 0)
        ours = np.moveaxis(np.squeeze(canonical(tmp_path / "ours" / "ct_probabilities.nii.gz")), -1, 0)
        np.testing.assert_allclose(ours, probs, atol=0.5 / 255 + 1e-4, rtol=0)  # tilewise's: uint8 p * 255

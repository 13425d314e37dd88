"""Importance maps: the gaussian and constant maps are MONAI's, bit for bit, without importing MONAI;
nnU-Net's gaussian is nnU-Net's, value for value."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data.utils import compute_importance_map

from pipeline.core.blending import MIN_WEIGHT, importance_map


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("sigma", [0.125, 0.3, 0.01])
@pytest.mark.parametrize("patch", [(256, 256), (64, 48), (96, 96, 96), (5, 7, 3), (1, 9)])
def test_map_is_monai_bit_for_bit(patch, mode, sigma):
    ours = importance_map(patch, mode, sigma)
    theirs = compute_importance_map(patch, mode=mode, sigma_scale=sigma, device="cpu", dtype=torch.float32)
    theirs = theirs.numpy()
    floor = max(float(theirs.min()), MIN_WEIGHT)  # the one step of ours MONAI has in its own way
    np.testing.assert_array_equal(ours, np.maximum(theirs, floor).astype(np.float32))
    assert ours.shape == patch and not ours.flags.writeable


def test_other_modes_taper_and_stay_positive():
    for mode in ("cosine", "crop"):
        w = importance_map((32, 32), mode, 0.125, 0.25)
        assert w.min() >= MIN_WEIGHT and w.max() == pytest.approx(1.0)
        assert w[16, 16] > w[0, 0]
    with pytest.raises(ValueError):
        importance_map((8, 8), "triangle")


@pytest.mark.parametrize("patch", [(16, 48, 48), (64, 64), (20, 33, 7)])
def test_nnunet_gaussian_equals_compute_gaussian(patch):
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    ref = compute_gaussian(patch, 1.0 / 8, value_scaling_factor=10, device=torch.device("cpu"))
    assert ref.dtype == torch.float16
    np.testing.assert_array_equal(importance_map(patch, "nnunet"), ref.float().numpy())


def test_nnunet_gaussian_of_a_2d_model_over_a_volume_is_its_2d_map():
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    ref = (
        compute_gaussian((64, 64), 1.0 / 8, value_scaling_factor=10, device=torch.device("cpu"))
        .float()
        .numpy()
    )
    np.testing.assert_array_equal(importance_map((1, 64, 64), "nnunet")[0], ref)
    np.testing.assert_array_equal(importance_map((64, 64, 1), "nnunet")[..., 0], ref)

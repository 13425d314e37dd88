"""Importance maps: nnU-Net's gaussian is nnU-Net's, value for value."""

import numpy as np
import pytest
import torch

from pipeline.core.blending import importance_map


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

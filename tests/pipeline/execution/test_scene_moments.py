"""Per-scene z-score statistics are exact (every voxel, any slab size), as MONAI's NormalizeIntensity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.bundle import Normalization
from pipeline.core.box import Box
from pipeline.execution.preprocess import Preprocessor
from pipeline.formats.nifti_reader import open_nifti


@pytest.mark.parametrize("nonzero", [False, True])
def test_scene_zscore_equals_monai_normalize_intensity(data: Path, nonzero: bool) -> None:
    from monai.transforms import NormalizeIntensity

    scene = open_nifti(str(data / "medical/totalsegmentator/example_mr_sm.nii.gz"))
    norm = Normalization(kind="scene_zscore", nonzero=nonzero, channel_wise=True)
    pre = Preprocessor(norm, ["t1"], uri=scene.uri)
    pre.compute_moments(scene, slab_budget=5_000)  # many slabs, combined
    raw = scene.read(Box.from_shape(scene.spatial_shape))
    mine = pre(raw)
    theirs = NormalizeIntensity(nonzero=nonzero, channel_wise=True)(torch.from_numpy(raw.astype(np.float32)))
    np.testing.assert_allclose(mine, np.asarray(theirs), atol=1e-5, rtol=0)
    if nonzero:
        assert (mine[raw == 0] == 0).all()

"""Keep-largest-component on labels equals MONAI's KeepLargestConnectedComponent, on real organ labels."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.job.outputs import keep_largest_components


@pytest.fixture(scope="module")
def labels(data: Path) -> np.ndarray:
    """TotalSegmentator's CT labels, a few organs kept, with speckle added so there is something to drop."""
    seg = np.asarray(nib.load(str(data / "medical/totalsegmentator/example_seg.nii.gz")).dataobj)
    out = np.select([seg == 5, seg == 1, np.isin(seg, [2, 3])], [1, 2, 3], 0).astype(np.uint8)
    rng = np.random.default_rng(0)
    speckle = rng.random(out.shape) < 0.002
    out[speckle] = rng.integers(1, 4, int(speckle.sum()))
    return out


@pytest.mark.parametrize(
    "kw",
    [
        {"applied_labels": [1, 2, 3], "independent": True, "connectivity": None, "num_components": 1},
        {"applied_labels": [3], "independent": True, "connectivity": 1, "num_components": 2},
        {"applied_labels": [1, 3], "independent": False, "connectivity": None, "num_components": 1},
    ],
)
def test_equals_monai(labels: np.ndarray, kw: dict) -> None:
    from monai.transforms import KeepLargestConnectedComponent

    theirs = KeepLargestConnectedComponent(**kw)(torch.from_numpy(labels[None].astype(np.int64)))[0]
    mine = keep_largest_components(labels, SimpleNamespace(**kw), nodata_label=255)
    assert (mine != labels).any()  # the speckle was removed, so the comparison means something
    np.testing.assert_array_equal(mine, np.asarray(theirs))

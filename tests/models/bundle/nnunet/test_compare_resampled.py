"""A case whose spacing differs from the plans': nnU-Net resamples it (normalised first, cubic splines)
and resamples the blended logits back before the argmax; tilewise must do the same, block-wise.

ts_a relabelled to 2.5 x 2.2 x 4 mm (``cases.write_unseen(resampled_spacing=...)``); fold 0, no
mirroring. Held to stock nnU-Net (tilewise sums in float16 as it does, test_compare.py): labels and
probabilities; an uneven block size with two Dask workers gives the one-block result. The 2-D
configuration resamples the same case in-plane only (its slices keep their 4 mm) and back the same way.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.models.bundle.nnunet.cases import write_unseen
from tests.models.bundle.nnunet.conftest import dice
from tests.models.bundle.nnunet.reference import nnunet_predict
from tests.models.bundle.nnunet.test_compare import _tilewise

SPACING = (2.5, 2.2, 4.0)


@pytest.fixture(scope="module")
def resampled_case(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding only ts_r (its spacing is not the plans' 3 mm)."""
    folder = tmp_path_factory.mktemp("nnunet-resampled")
    for f in write_unseen(data, folder, resampled_spacing=SPACING):
        if not f.name.startswith("ts_r"):
            f.unlink()
    return folder


# configuration: (its model fixture, the fewest labels nnU-Net finds, the uneven cut and its workers)
CONFIGURATIONS = {
    "3d": ("model3d", 5, {"workers": 2, "block_size": [50, 61, 17]}),
    # nnU-Net's 2-D configuration has a 2-entry spacing: DefaultPreprocessor resamples each case to 3 x 3
    # mm in-plane and keeps its 4 mm between slices, and the export takes the logits back the same way;
    # tilewise's ``target_spacing`` keeps that axis (None). The small 2-D model finds liver and vertebrae
    # here (as on the plans' grid, test_compare.py).
    "2d": ("model2d", 3, {"block_size": [70, 45, 9]}),
}


@pytest.mark.parametrize("configuration", list(CONFIGURATIONS))
def test_resampled_case_equals_nnunet_predictor(configuration, resampled_case, tmp_path, request):
    fixture, fewest_labels, cut_options = CONFIGURATIONS[configuration]
    model = request.getfixturevalue(fixture)
    case = resampled_case / "ts_r_0000.nii.gz"
    exact_seg, exact_p = nnunet_predict(model, [[case]], mirroring=False, probabilities=True)[0]
    assert len(np.unique(exact_seg)) >= fewest_labels, "nnU-Net's labels lack structure"
    ours = _tilewise(model, resampled_case, tmp_path / "one", names=("ts_r",), folds=[0], mirroring=False,
                     probabilities=True)["ts_r"]  # fmt: skip
    assert ours.shape == exact_seg.shape == nib.load(case).shape
    agreement = float((ours == exact_seg).mean())
    dices = {k: dice(ours, exact_seg, k) for k in range(6)}
    differ = int((ours != exact_seg).sum())
    print(f"ts_r {configuration} labels vs nnU-Net: {differ} voxels differ, Dice {dices}")
    assert agreement >= 0.9995 and min(dices.values()) >= 0.999, (agreement, dices)
    # measured: identical (normalised then resampled input within 1 float32 ulp of nnU-Net's)
    assert differ <= 2, differ
    img = nib.load(tmp_path / "one" / "ts_r_0000_probabilities.nii.gz")
    probs = np.moveaxis(np.asarray(img.dataobj, dtype=np.float32), -1, 0)
    gap = float(np.abs(probs - exact_p).max())
    print(f"ts_r {configuration} probabilities vs nnU-Net: max abs difference {gap:.5f}")
    # float32 on disk (from the exact scores); the float16 logits nnU-Net stores after resampling flip
    # by one float16 step where tilewise's float64 sums round the other way: 0.00097 measured (3-D)
    assert gap <= 2e-3, gap
    cut = _tilewise(model, resampled_case, tmp_path / "cut", names=("ts_r",), folds=[0], mirroring=False,
                    **cut_options)["ts_r"]  # fmt: skip
    np.testing.assert_array_equal(cut, ours)

"""tilewise against nnU-Net's own nnUNetPredictor, on the same unseen cases with the same settings.

Both run here, on the CPU, on the real CT cases of ``conftest.unseen``; nothing is precomputed. Labels
must agree voxel by voxel (>= 99.95 %) and per class (Dice >= 0.997: nnU-Net's float16 logits flip
near-ties); with nnU-Net's float16 sums made float32 (``reference.nnunet_predict(float32_sums=True)``)
they must be the same but for at most 2 voxels. tilewise's own results must not depend on block size
or worker count.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.job.config import JobConfig
from pipeline.job.skeleton import run_job
from tests.models.bundle.nnunet.conftest import dice
from tests.models.bundle.nnunet.reference import nnunet_predict

CASES = ("ts_a", "ts_b")


def _tilewise(
    model: Path, cases: Path, out: Path, names: tuple[str, ...] = CASES, **options
) -> dict[str, np.ndarray]:
    """Labels per case from an in-process job (the CLI's own path below the Prefect flow)."""
    execution = {"device": "cpu"}
    for key in ("workers", "batch_size"):
        if key in options:
            execution[key] = options.pop(key)
    tiling = {"block_size": options.pop("block_size")} if "block_size" in options else {}
    outputs = {"format": "nifti", "quicklook": False, "probabilities": options.pop("probabilities", False)}
    config = JobConfig.model_validate(
        {
            "input": str(cases),
            "output": str(out),
            "model": str(model),
            "model_options": options,
            "execution": execution,
            "tiling": tiling,
            "outputs": outputs,
        }
    )
    results = run_job(config)
    assert [r.status for r in results] == ["ok"] * len(names), [r.reason for r in results]
    return {case: np.asanyarray(nib.load(out / f"{case}_0000_labels.nii.gz").dataobj) for case in names}


def _assert_agrees(
    ours: dict[str, np.ndarray], theirs: list[np.ndarray], classes: int, min_dice: float = 0.997
) -> None:
    for case, ref in zip(CASES, theirs, strict=True):
        mine = ours[case]
        assert mine.shape == ref.shape, case
        assert len(np.unique(ref)) >= 3, "nnU-Net's labels lack structure: retrain (data/make_model.py)"
        agreement = float((mine == ref).mean())
        dices = {k: dice(mine, ref, k) for k in range(classes)}
        assert agreement >= 0.9995, (case, agreement)
        # nnU-Net sums logits in float16; the voxels where the two differ were measured to be near-ties
        # (top-two logit gap <= 0.005 in tilewise's float32 sums, 88 of 312480 on ts_a), which costs a
        # small class (kidney, ~5800 voxels) up to ~0.0022 Dice (0.9978 measured with mirroring)
        assert min(dices.values()) >= min_dice, (case, dices)


SETTINGS = [
    # 3-D mirroring is held to the exact (float32-sum) nnU-Net only: stock nnU-Net with mirroring is the
    # 2-D case's, and running it a third time here cost the suite ~45 s
    pytest.param("3d", (0,), True, False, id="3d-fold0-mirroring"),
    pytest.param("3d", (0,), False, True, id="3d-fold0-no-mirroring"),
    pytest.param("3d", (0, 1), False, True, id="3d-ensemble-folds01"),
    # nnU-Net's 2-D predictor runs twice here (float16 and float32 sums), slice by slice with mirroring:
    # over 600 s on the shared 2-core machine
    pytest.param("2d", (0,), True, True, id="2d-fold0-mirroring", marks=pytest.mark.timeout(1800)),
]


@pytest.mark.parametrize(("config", "folds", "mirroring", "stock"), SETTINGS)
def test_labels_equal_nnunet_predictor(config, folds, mirroring, stock, request, unseen, tmp_path):
    model = request.getfixturevalue("model3d" if config == "3d" else "model2d")
    ours = _tilewise(model, unseen, tmp_path / "out", folds=list(folds), mirroring=mirroring)
    exact = nnunet_predict(model, [[unseen / f"{c}_0000.nii.gz"] for c in CASES], folds=folds,
                           mirroring=mirroring, float32_sums=True)  # fmt: skip
    for case, ref in zip(CASES, exact, strict=True):
        # the gap below is all float16: with float32 sums, nnU-Net's labels are tilewise's (the
        # ensemble's fold average rounds differently in float32: 1 voxel of 312480 measured)
        assert int((ours[case] != ref).sum()) <= 2, (case, int((ours[case] != ref).sum()))
    if not stock:
        return
    theirs = nnunet_predict(
        model, [[unseen / f"{c}_0000.nii.gz"] for c in CASES], folds=folds, mirroring=mirroring
    )
    # two folds: nnU-Net adds the folds' float16 logits too; kidney Dice measured 0.9951 (not yet
    # shown to be near-ties only, see docs/models.md), voxel agreement still >= 99.95 %
    _assert_agrees(ours, theirs, classes=6, min_dice=0.995 if len(folds) > 1 else 0.997)


def test_blocks_and_workers_give_the_one_block_result(model3d, unseen, tmp_path):
    """An uneven cut of nnU-Net's grid into blocks, and two Dask workers: byte for byte the same."""
    one = _tilewise(model3d, unseen, tmp_path / "one", folds=[0], mirroring=False)
    cut = _tilewise(model3d, unseen, tmp_path / "cut", folds=[0], mirroring=False, block_size=[50, 61, 17])
    dask = _tilewise(
        model3d, unseen, tmp_path / "dask", folds=[0], mirroring=False, workers=2, block_size=[64, 48, 16]
    )
    for case in CASES:
        np.testing.assert_array_equal(cut[case], one[case])
        np.testing.assert_array_equal(dask[case], one[case])


@pytest.mark.parametrize(
    ("scheme", "mask"), [("ZScoreNormalization", True), ("RescaleTo01Normalization", False)]
)
def test_cropped_mr_cases_labels_equal_nnunet_predictor(scheme, mask, model3d, data, tmp_path):
    """Real MR volumes with zero borders (nnU-Net crops them, normalises the crop, pads labels back
    with 0); the TotalSegmentator MR has holes in its non-zero mask, which nnU-Net fills."""
    from tests.models.bundle.nnunet.cases import write_mr
    from tests.models.bundle.nnunet.test_preprocess import with_scheme

    model = with_scheme(model3d, tmp_path / "model", scheme, mask)
    cases = tmp_path / "cases"
    cases.mkdir()
    files = write_mr(data, cases)
    names = ("mni", "mr")
    theirs = nnunet_predict(model, [[f] for f in files], folds=(0,), mirroring=False)
    exact = nnunet_predict(model, [[f] for f in files], folds=(0,), mirroring=False, float32_sums=True)
    ours = _tilewise(model, cases, tmp_path / "out", names=names, folds=[0], mirroring=False)
    for name, file, ref, ref32 in zip(names, files, theirs, exact, strict=True):
        assert ours[name].shape == ref.shape == nib.load(file).shape
        assert len(np.unique(ref)) >= 3, "nnU-Net's labels lack structure"
        # crop, normalisation and padding back are exact: nnU-Net with float32 sums gives the same labels
        np.testing.assert_array_equal(ours[name], ref32, err_msg=name)
        # stock nnU-Net's float16 sums flip near-ties: 0.99903 measured on the MNI case (CT net, MR input)
        assert float((ours[name] == ref).mean()) >= 0.999, name
    if mask:  # the filled mask's holes reach every block and worker: the one-block result
        cut = _tilewise(model, cases, tmp_path / "cut", names=names, folds=[0], mirroring=False,
                        workers=2, block_size=[40, 37, 9])  # fmt: skip
        for name in names:
            np.testing.assert_array_equal(cut[name], ours[name])


def test_probabilities_and_names_equal_nnunet(model3d, unseen, tmp_path):
    """``run --probabilities --nnunet-names``: the softmax of the blended logits on the input's grid,
    as nnU-Net saves it, and labels named ``CASE.nii.gz`` as nnU-Net names them."""
    from typer.testing import CliRunner

    from flows.cli.app import app

    theirs = nnunet_predict(model3d, [[unseen / f"{c}_0000.nii.gz"] for c in CASES], mirroring=False,
                            probabilities=True, float32_sums=True)  # fmt: skip
    out = tmp_path / "out"
    args = ["run", str(unseen), str(out), "--model", str(model3d), "--folds", "0", "--no-mirroring",
            "--probabilities", "--nnunet-names", "--device", "cpu", "--no-prefect"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert not list(out.glob("*_labels*")) and not list(out.glob("*_0000*")), sorted(out.iterdir())
    for case, (seg, ref) in zip(CASES, theirs, strict=True):
        np.testing.assert_array_equal(np.asanyarray(nib.load(out / f"{case}.nii.gz").dataobj), seg)
        img = nib.load(out / f"{case}_probabilities.nii.gz")
        ours = np.moveaxis(np.asarray(img.dataobj, dtype=np.float32), -1, 0)  # (K, x, y, z), p = q / 255
        assert ours.shape == ref.shape, case
        # stored as round(p * 255): within 1/510 of nnU-Net's (float32-sum) probabilities
        assert float(np.abs(ours - ref).max()) <= 1 / 510 + 1e-4, (case, float(np.abs(ours - ref).max()))

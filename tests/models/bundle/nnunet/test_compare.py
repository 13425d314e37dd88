"""tilewise against nnU-Net's own nnUNetPredictor, on the same unseen cases with the same settings.

Both run here, on the CPU, on the real CT cases of ``conftest.unseen``; nothing is precomputed. tilewise
sums as nnU-Net does (float16, in its tile order: ``accumulate: nnunet``, the default), so the labels must
be nnU-Net's voxel for voxel, which is more than the issue's bound (Dice >= 0.999, agreement >= 99.95 %).
tilewise's own results must not depend on block size or worker count.
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


def _assert_same(
    ours: dict[str, np.ndarray], theirs: list[np.ndarray], names: tuple[str, ...] = CASES, classes: int = 6
) -> None:
    for case, ref in zip(names, theirs, strict=True):
        assert ours[case].shape == ref.shape, case
        assert len(np.unique(ref)) >= 3, "nnU-Net's labels lack structure: retrain (data/make_model.py)"
        worst = min(dice(ours[case], ref, k) for k in range(classes))
        differ = int((ours[case] != ref).sum())
        assert differ == 0, (case, differ, worst)


SETTINGS = [
    # 3-D mirroring runs the net 8 times per window, one window per pass on both sides: one case
    # (ts_b) keeps it to ~55 s; the other settings run both
    pytest.param("3d", (0,), True, ("ts_b",), id="3d-fold0-mirroring"),
    pytest.param("3d", (0,), False, CASES, id="3d-fold0-no-mirroring"),
    pytest.param("3d", (0, 1), False, CASES, id="3d-ensemble-folds01"),
    # nnU-Net's 2-D predictor runs slice by slice with mirroring: minutes on the shared 2-core machine
    pytest.param("2d", (0,), True, CASES, id="2d-fold0-mirroring", marks=pytest.mark.timeout(1800)),
]


@pytest.mark.parametrize(("config", "folds", "mirroring", "names"), SETTINGS)
def test_labels_equal_nnunet_predictor(config, folds, mirroring, names, request, unseen, tmp_path):
    model = request.getfixturevalue("model3d" if config == "3d" else "model2d")
    cases = tmp_path / "cases"
    cases.mkdir()
    for c in names:
        (cases / f"{c}_0000.nii.gz").symlink_to(unseen / f"{c}_0000.nii.gz")
    ours = _tilewise(model, cases, tmp_path / "out", names=names, folds=list(folds), mirroring=mirroring)
    theirs = nnunet_predict(
        model, [[cases / f"{c}_0000.nii.gz"] for c in names], folds=folds, mirroring=mirroring
    )
    _assert_same(ours, theirs, names)


def test_blocks_and_workers_give_the_one_block_result(model3d, unseen, tmp_path):
    """An uneven cut of nnU-Net's grid into blocks, and two Dask workers, with a two-fold ensemble (its
    float16 sums are replayed across the seams in nnU-Net's tile order): byte for byte the same. The
    float32 sums (``accumulate: float32``) agree with them but for near-ties."""
    opts = {"folds": [0, 1], "mirroring": False}
    one = _tilewise(model3d, unseen, tmp_path / "one", **opts)
    cut = _tilewise(model3d, unseen, tmp_path / "cut", **opts, block_size=[50, 61, 17])
    dask = _tilewise(model3d, unseen, tmp_path / "dask", **opts, workers=2, block_size=[64, 48, 16])
    wide = _tilewise(model3d, unseen, tmp_path / "f32", **opts, accumulate="float32", block_size=[50, 61, 17])
    for case in CASES:
        np.testing.assert_array_equal(cut[case], one[case])
        np.testing.assert_array_equal(dask[case], one[case])
        assert float((wide[case] == one[case]).mean()) >= 0.9995, case
        assert min(dice(wide[case], one[case], k) for k in range(6)) >= 0.99, case


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
    ours = _tilewise(model, cases, tmp_path / "out", names=names, folds=[0], mirroring=False)
    for name, file, ref in zip(names, files, theirs, strict=True):
        assert ours[name].shape == ref.shape == nib.load(file).shape
        assert len(np.unique(ref)) >= 3, "nnU-Net's labels lack structure"
        # crop, normalisation, float16 sums and padding back as nnU-Net's: the same labels
        np.testing.assert_array_equal(ours[name], ref, err_msg=name)
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
                            probabilities=True)  # fmt: skip
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
        # stored as round(p * 255): within 1/510 of nnU-Net's probabilities, so within the 2e-3
        assert float(np.abs(ours - ref).max()) <= 2e-3, (case, float(np.abs(ours - ref).max()))


def test_ome_zarr_outputs_of_a_cropped_case_are_padded_back(model3d, data, tmp_path):
    """OME-Zarr labels and probabilities of a case nnU-Net crops lie on the input's grid, as the
    NIfTI ones (held to nnU-Net above) do: the same voxels, background outside the crop."""
    import zarr

    from tests.models.bundle.nnunet.cases import write_mr

    cases = tmp_path / "cases"
    cases.mkdir()
    (mni,) = write_mr(data, cases)[:1]
    (cases / "mr_0000.nii.gz").unlink()
    runs = {}
    for fmt in ("nifti", "zarr"):
        config = JobConfig.model_validate(
            {"input": str(cases), "output": str(tmp_path / fmt), "model": str(model3d),
             "model_options": {"folds": [0], "mirroring": False}, "execution": {"device": "cpu"},
             "outputs": {"format": fmt, "quicklook": False, "probabilities": True}}
        )  # fmt: skip
        (result,) = run_job(config)
        assert result.status == "ok", result.reason
        runs[fmt] = {k: Path(v) for k, v in result.outputs.items()}
    shape = nib.load(mni).shape
    nifti = np.moveaxis(nib.load(runs["nifti"]["probabilities"]).dataobj.get_unscaled(), -1, 0)
    probs = zarr.open_array(str(runs["zarr"]["probabilities"]), mode="r")[...]
    assert probs.shape == (6, *shape) == nifti.shape
    np.testing.assert_array_equal(probs, nifti)  # both round(p * 255)
    labels = np.asanyarray(nib.load(runs["nifti"]["labels"]).dataobj)
    nonzero = np.argwhere(np.asanyarray(nib.load(mni).dataobj) != 0)
    outside = np.ones(shape, bool)  # outside nnU-Net's crop box: background, probability 1
    outside[tuple(slice(a, b + 1) for a, b in zip(nonzero.min(0), nonzero.max(0), strict=True))] = False
    assert outside.any() and (probs[0][outside] == 255).all() and not probs[1:, outside].any()
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    (node, *_) = Reader(parse_url(str(runs["zarr"]["labels"])))()
    level0 = np.asarray(node.data[0])
    np.testing.assert_array_equal(level0, labels.transpose(2, 1, 0))  # stored (z, y, x)

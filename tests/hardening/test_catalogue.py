"""The bad-input catalogue through the real job path (``run_job``): one 2-D and one 3-D job, each
with a good scene beside every generated bad kind. A bad scene fails alone with one line naming the
file and the problem; nothing of it appears at a final path; the good scenes finish."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.job.config import load_config
from pipeline.job.results import SceneResult
from pipeline.job.skeleton import run_job

from .catalogue import KINDS, ROTATED, Kind, build_folder
from .conftest import finals, leftovers


@dataclass
class Outcome:
    folder: Path
    out: Path
    results: dict[str, SceneResult]  # by scene path relative to the input folder

    def result(self, kind: Kind) -> SceneResult:
        return self.results[kind.name]


def _run(root: Path, data: Path, bundle: Path, dims: int) -> Outcome:
    folder, out = root / "in", root / "out"
    build_folder(folder, data, dims)
    cfg = load_config(None, {"input": str(folder), "output": str(out), "model": str(bundle)})
    results = {str(Path(r.uri).relative_to(folder)): r for r in run_job(cfg)}
    return Outcome(folder, out, results)


@pytest.fixture(scope="module")
def job2(tmp_path_factory, data, bundle2) -> Outcome:
    return _run(tmp_path_factory.mktemp("catalogue2d"), data, bundle2, 2)


@pytest.fixture(scope="module")
def job3(tmp_path_factory, data, bundle3) -> Outcome:
    return _run(tmp_path_factory.mktemp("catalogue3d"), data, bundle3, 3)


def test_catalogue_has_at_least_20_kinds():
    assert len(KINDS) >= 20
    assert len({k.name for k in KINDS}) == len(KINDS)


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_kind(kind: Kind, request: pytest.FixtureRequest) -> None:
    job: Outcome = request.getfixturevalue(f"job{kind.dims}")
    good = job.results["good.tif" if kind.dims == 2 else "good.nii.gz"]
    assert good.status == "ok", good.reason  # the other scenes of the same job still finish
    assert not leftovers(job.out)
    if kind.expect == "absent":
        assert not [k for k in job.results if k.startswith(kind.name)]
        return
    result = job.result(kind)
    if kind.expect == "ok":
        assert result.status == "ok", result.reason
        assert Path(result.outputs["labels"]).exists() and Path(result.outputs["report"]).exists()
        return
    assert result.status == "failed"
    reason = result.reason
    assert "\n" not in reason and "Traceback" not in reason and "internal error" not in reason
    assert str(job.folder / kind.name) in reason, reason  # names the file
    for word in kind.words:
        assert word in reason.lower(), reason
    assert not finals(job.out, kind.stem)  # nothing at the final paths


def _labels(result: SceneResult) -> tuple[np.ndarray, dict]:
    with rasterio.open(result.outputs["labels"]) as src:
        return src.read(1), {"crs": src.crs, "transform": src.transform, "nodata": src.nodata}


@pytest.mark.parametrize("name", ["collar.tif", "nan.tif"])
def test_all_nodata_scene_succeeds_with_every_pixel_nodata(job2: Outcome, name: str) -> None:
    """Decision: an all-nodata (or all-NaN) scene is not an error (a tile wholly in a collar is normal
    in a bucket); no window is computed, every pixel is the nodata label, the report says so."""
    result = job2.results[name]
    labels, meta = _labels(result)
    assert (labels == 255).all() and meta["nodata"] == 255
    report = json.loads(Path(result.outputs["report"]).read_text())
    assert report["windows_computed"] == 0 and report["nodata_pixels"] == labels.size


def test_constant_image_gets_real_labels(job2: Outcome) -> None:
    labels, _ = _labels(job2.results["flat.tif"])
    assert labels.max() < 2  # class ids only: a constant value is data, not nodata


def test_no_crs_scene_keeps_no_crs_and_reports_pixels_not_hectares(job2: Outcome) -> None:
    result = job2.results["plain.tif"]
    _, meta = _labels(result)
    assert meta["crs"] is None
    report = json.loads(Path(result.outputs["report"]).read_text())
    assert all("area_ha" not in row for row in report["classes"])


def test_rotated_transform_is_kept(job2: Outcome) -> None:
    _, meta = _labels(job2.results["rotated.tif"])
    assert meta["transform"].almost_equals(ROTATED, precision=1e-6)
    assert meta["crs"] is not None


def test_non_ascii_and_spaces_in_names_work(job2: Outcome) -> None:
    assert (job2.out / "dossier été" / "scène №1_labels.tif").exists()  # the input's folder, mirrored
    assert (job2.out / "my scene  copy_labels.tif").exists()


def test_zarr_missing_chunk_reads_as_fill_value(job3: Outcome) -> None:
    """Decision: zarr's own rule; an absent chunk is empty space (fill value), not damage."""
    from pipeline.core.box import Box
    from pipeline.formats.zarr_reader import open_zarr

    scene = open_zarr(job3.folder / "holes.zarr")
    assert not scene.read(Box((0, 0, 20), (6, 18, 40))).any()  # the deleted chunk (0, 0, 1)
    assert job3.results["holes.zarr"].status == "ok"


def test_all_nan_volume_is_all_nodata(job3: Outcome) -> None:
    import nibabel as nib

    result = job3.results["nan_volume.nii.gz"]
    assert (np.asarray(nib.load(result.outputs["labels"]).dataobj) == 255).all()


def test_symlinked_folder_loop_is_not_followed(job2: Outcome) -> None:
    """``sub/again -> ..`` is never entered, so every scene is found exactly once."""
    assert not [k for k in job2.results if k.startswith("sub/")]
    assert len(job2.results) == len(set(job2.results))


def test_two_scenes_with_one_name_never_share_outputs(tmp_path, data, bundle2):
    """``a/x.tif`` and ``b/x.tif`` land in ``OUTPUT/a`` and ``OUTPUT/b``; ``x.tif`` and ``x.tiff`` in one
    folder would both write ``OUTPUT/x_*``: the second fails, naming both, instead of being skipped as
    done (or, with --overwrite, replacing the first one's results)."""
    from .catalogue import TENTH

    folder, out = tmp_path / "in", tmp_path / "out"
    for rel in ("a/x.tif", "b/x.tif", "c/x.tif", "c/x.tiff"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes((data / TENTH).read_bytes())
    cfg = load_config(None, {"input": str(folder), "output": str(out), "model": str(bundle2)})
    results = {r.uri: r for r in run_job(cfg)}
    assert [results[str(folder / r)].status for r in ("a/x.tif", "b/x.tif", "c/x.tif")] == ["ok"] * 3
    second = results[str(folder / "c/x.tiff")]
    assert second.status == "failed"
    assert str(folder / "c/x.tiff") in second.reason and str(folder / "c/x.tif") in second.reason
    for sub in ("a", "b", "c"):
        report = json.loads((out / sub / "x_report.json").read_text())
        assert report["input"] == str(folder / sub / "x.tif")

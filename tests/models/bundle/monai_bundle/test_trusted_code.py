"""A MONAI bundle that needs its own code (a network class in its ``scripts/`` package, as zoo bundles
ship them, and a ``$`` expression in its preprocessing) runs with ``trust_code`` (``--trust-code``) on
real Dask worker processes, with the same labels as in one process, and is refused without it: up
front, and also by a worker asked to open it untrusted. Untrained weights suffice: the comparison is
tilewise with itself across executors; MONAI itself is the peer in test_peer.py."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from models.bundle.monai_bundle.convert import import_monai
from models.bundle.sources import open_model
from pipeline.errors import BundleError
from pipeline.job.config import load_config
from pipeline.job.discover import WORK_DIR
from pipeline.job.scene_job import run_scene
from pipeline.job.skeleton import make_executor, prepare_job, run_job
from tests.models.bundle.monai_bundle import zoo
from tests.models.bundle.monai_bundle.test_load import make

NET_MODULE = '''"""The bundle's own network (zoo bundles keep theirs in scripts/networks/...)."""
from monai.networks.nets import UNet


class OrganNet(UNet):
    pass
'''
REFUSED = r"inference\.json: .*(is a \$ expression|is not a class of monai\.networks\.nets).*--trust-code"


@pytest.fixture(scope="module")
def code_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("trusted")

    def edit(c: dict) -> None:
        c["network_def"]["_target_"] = "scripts.networks.OrganNet"
        c["preprocessing"]["transforms"][3]["a_min"] = "$-100.0 * 2"

    folder = make(tmp, edit, name="code_bundle")
    (folder / "scripts").mkdir()
    (folder / "scripts" / "__init__.py").write_text("")
    (folder / "scripts" / "networks.py").write_text(NET_MODULE)
    return folder


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    folder = tmp_path_factory.mktemp("cases")
    shutil.copy(data / zoo.CT, folder / "ct.nii.gz")
    return folder


def job(case: Path, model: Path, out: Path, *, trusted: bool, workers: int = 0):
    return load_config(
        None,
        {
            "input": str(case),
            "output": str(out),
            "model": str(model),
            "model_options": {"trust_code": True} if trusted else {},
            "execution.workers": workers,
        },
    )


def test_trusted_code_runs_on_dask_workers_as_in_one_process(
    code_bundle: Path, case: Path, tmp_path: Path
) -> None:
    (local,) = run_job(job(case, code_bundle, tmp_path / "local", trusted=True))
    (dask,) = run_job(job(case, code_bundle, tmp_path / "dask", trusted=True, workers=2))
    assert (local.status, dask.status) == ("ok", "ok"), (local.reason, dask.reason)
    assert dask.windows == local.windows and dask.report["execution"]["workers"] == 2
    # the workers built the bundle's own class from its folder: nothing was saved as data for them
    assert not (tmp_path / "dask" / WORK_DIR / "models").exists()
    mine = np.asarray(nib.load(str(tmp_path / "dask" / "ct_labels.nii.gz")).dataobj)
    theirs = np.asarray(nib.load(str(tmp_path / "local" / "ct_labels.nii.gz")).dataobj)
    np.testing.assert_array_equal(mine, theirs)


def test_untrusted_code_is_refused_up_front_and_by_the_workers(
    code_bundle: Path, case: Path, tmp_path: Path
) -> None:
    with pytest.raises(BundleError, match=REFUSED):
        run_job(job(case, code_bundle, tmp_path / "a", trusted=False, workers=2))
    # a job whose workers are asked to open the bundle without the user's trust: they refuse too
    trusted = job(case, code_bundle, tmp_path / "b", trusted=True, workers=2)
    prepared = prepare_job(trusted)
    untrusted = trusted.model_copy(update={"model_options": {}})
    with make_executor(untrusted, prepared.bundle) as executor:
        result = run_scene(prepared.scenes[0], prepared.bundle, untrusted, prepared.out_dir, executor)
    assert result.status == "failed"
    assert re.search(REFUSED, result.reason), result.reason
    assert not (tmp_path / "b" / "ct_labels.nii.gz").exists()


def test_a_net_from_the_bundles_own_code_is_not_imported_as_data(code_bundle: Path, tmp_path: Path) -> None:
    assert open_model(code_bundle, options={"trust_code": True}).build() is not None
    with pytest.raises(BundleError, match=r"needs code .*cannot be stored as data.*TorchScript"):
        import_monai(code_bundle, tmp_path / "imported", trust_code=True)
    assert not (tmp_path / "imported").exists()

"""The job skeleton: a job that cannot start is refused up front, the model is built once and only
when a scene has blocks to compute, and scenes in flight come back in scene order."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pipeline.errors import BundleError, ConfigError
from pipeline.job.config import load_config
from pipeline.job.results import SceneResult
from pipeline.job.skeleton import in_scene_order, prepare_job, run_each, run_job, scenes_in_flight

TENTH = "geo/rasterio/rgb-byte-tenth.tif"


def _config(src: Path, out: Path, bundle: Path | str, **over):
    return load_config(None, {"input": str(src), "output": str(out), "model": str(bundle), **over})


def test_a_job_that_cannot_start_is_refused_before_any_scene(tmp_path, data, bundle_factory):
    bundle = bundle_factory(2, 3, ["land", "water"], 64, [4, 8])
    with pytest.raises(ConfigError, match="input, output and model"):
        prepare_job(load_config(None, {"input": str(data / TENTH)}))
    with pytest.raises(BundleError, match="not found"):
        prepare_job(_config(data / TENTH, tmp_path / "out", tmp_path / "nope"))
    with pytest.raises(ConfigError, match="bucket flow"):
        prepare_job(_config(data / TENTH, "s3://bucket/out", bundle))
    job = prepare_job(_config(data / TENTH, tmp_path / "out", bundle))
    assert [s.uri for s in job.scenes] == [str(data / TENTH)] and job.out_dir.is_dir()


def test_the_model_is_built_once_for_all_scenes_and_not_at_all_when_they_are_done(
    tmp_path, data, bundle_factory, monkeypatch
):
    from models.bundle import Bundle

    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.tif", "b.tif"):
        (src / name).write_bytes((data / TENTH).read_bytes())
    builds: list[str] = []
    real = Bundle.build
    monkeypatch.setattr(
        Bundle, "build", lambda self, device="cpu": (builds.append(str(device)), real(self, device))[1]
    )
    cfg = _config(src, tmp_path / "out", bundle_factory(2, 3, ["land", "water"], 64, [4, 8]))
    assert [(r.stem, r.status) for r in run_job(cfg)] == [("a", "ok"), ("b", "ok")]
    assert builds == ["cpu"]
    assert [r.status for r in run_job(cfg)] == ["skipped", "skipped"] and builds == ["cpu"]


def test_scenes_in_flight_run_together_and_come_back_in_scene_order():
    class Cluster:
        workers = 3

    assert scenes_in_flight(object(), 10) == 1  # in this process, one scene at a time
    assert scenes_in_flight(Cluster(), 10) == 6 and scenes_in_flight(Cluster(), 2) == 2
    running, peak, lock = 0, 0, threading.Lock()

    def work(i: int) -> SceneResult:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05 * (5 - i))  # later scenes finish first
        with lock:
            running -= 1
        return SceneResult(f"s{i}", f"s{i}", "ok")

    done = list(run_each(list(range(5)), work, 3))
    assert peak == 3 and [r.uri for r in done] != [f"s{i}" for i in range(5)]  # completion order

    class Source:
        def __init__(self, uri: str) -> None:
            self.uri = uri

    ordered = in_scene_order(done, [Source(f"s{i}") for i in range(5)])  # type: ignore[arg-type]
    assert [r.uri for r in ordered] == [f"s{i}" for i in range(5)]

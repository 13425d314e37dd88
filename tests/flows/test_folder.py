"""The folder flow: one task per scene, only transient errors retried, Failed run state when a scene
fails, artifacts with stable keys, caller hooks (progress, results) still served."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def test_folder_flow_retries_transient_errors_and_reports(tmp_path, data, small_bundle, monkeypatch):
    import flows.folder as folder
    from flows.artifacts import artifact_key
    from pipeline.job.config import load_config

    src = tmp_path / "in"
    src.mkdir()
    (src / "good.tif").write_bytes((data / "geo/rasterio/rgb-byte-tenth.tif").read_bytes())
    (src / "broken.tif").write_bytes((data / "geo/rasterio/RGB.byte.tif").read_bytes()[:5000])
    calls: Counter[str] = Counter()
    real = folder.run_scene

    def flaky(source, *args, **kwargs):
        calls[Path(source.uri).name] += 1
        if source.uri.endswith("good.tif") and calls["good.tif"] == 1:
            raise ConnectionResetError(104, "Connection reset by peer")
        return real(source, *args, **kwargs)

    monkeypatch.setattr(folder, "run_scene", flaky)
    ticks: list[str] = []
    seen: list[str] = []
    config = load_config(
        None, {"input": str(src), "output": str(tmp_path / "out"), "model": str(small_bundle)}
    )
    summary = folder.run_folder_job(
        config, progress=lambda uri, _: (ticks.append(uri), None)[1], on_result=lambda r: seen.append(r.stem)
    )
    assert calls == {"good.tif": 2, "broken.tif": 1}  # retried once; a corrupt file never
    assert {r.stem: r.status for r in summary.results} == {"good": "ok", "broken": "failed"}
    assert seen == ["broken", "good"] and len(ticks) == 2
    assert (tmp_path / "out/good_labels.tif").exists() and not (tmp_path / "out/broken_labels.tif").exists()

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(summary.flow_run_id)
        key = artifact_key("folder", str(tmp_path / "out"))
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=key)))
    assert run.state.is_failed() and "1 of 2 scenes failed" in run.state.message
    assert {a.key for a in arts} == {f"{key}-summary", f"{key}-scenes"}
    table = next(a for a in arts if a.type == "table")
    assert "good" in str(table.data) and "ha" in str(table.data)


def test_scenes_in_lanes_are_task_runs_of_the_same_flow_run(tmp_path, data, small_bundle, monkeypatch):
    """With a cluster executor several scenes run at once (as run_batch does); each is still a task
    run of this flow run, and the summary keeps the scene order."""
    import flows.folder as folder
    from pipeline.job.config import load_config

    src = tmp_path / "in"
    src.mkdir()
    for name in ("b.tif", "a.tif", "c.tif"):
        (src / name).write_bytes((data / "geo/rasterio/rgb-byte-tenth.tif").read_bytes())
    monkeypatch.setattr(folder, "concurrent_scenes", lambda executor, n: 2)
    config = load_config(
        None, {"input": str(src), "output": str(tmp_path / "out"), "model": str(small_bundle)}
    )
    summary = folder.run_folder_job(config)
    assert [(r.stem, r.status) for r in summary.results] == [("a", "ok"), ("b", "ok"), ("c", "ok")]

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[summary.flow_run_id]))
        )
    assert sorted(r.name for r in runs) == ["scene-a", "scene-b", "scene-c"]
    assert all(r.state.is_completed() for r in runs)


def test_unreachable_prefect_api_is_one_clear_error(tmp_path, small_bundle):
    import pytest
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.folder import run_folder_job
    from pipeline.errors import ConfigError
    from pipeline.job.config import load_config
    from tests.flows.conftest import free_port

    config = load_config(
        None, {"input": str(tmp_path), "output": str(tmp_path / "o"), "model": str(small_bundle)}
    )
    url = f"http://127.0.0.1:{free_port()}/api"
    with (
        temporary_settings(updates={PREFECT_API_URL: url}),
        pytest.raises(ConfigError, match="not reachable"),
    ):
        run_folder_job(config)

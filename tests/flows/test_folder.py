"""The folder flow: one task per scene, only transient errors retried, Failed run state when a scene
fails, artifacts with stable keys, caller hooks (progress, results) still served."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path


def test_folder_flow_retries_transient_errors_and_reports(tmp_path, data, small_bundle, monkeypatch):
    import flows.folder as folder
    import flows.scene_runs as scene_runs
    from flows.artifacts import artifact_key
    from pipeline.job.config import load_config

    src = tmp_path / "in"
    src.mkdir()
    (src / "good.tif").write_bytes((data / "geo/rasterio/rgb-byte-tenth.tif").read_bytes())
    (src / "broken.tif").write_bytes((data / "geo/rasterio/RGB.byte.tif").read_bytes()[:5000])
    calls: Counter[str] = Counter()
    real = scene_runs.run_scene

    def flaky(source, *args, **kwargs):
        calls[Path(source.uri).name] += 1
        if source.uri.endswith("good.tif") and calls["good.tif"] == 1:
            raise ConnectionResetError(104, "Connection reset by peer")
        return real(source, *args, **kwargs)

    monkeypatch.setattr(scene_runs, "run_scene", flaky)
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
    rows = {
        row["scene"]: row for row in (json.loads(table.data) if isinstance(table.data, str) else table.data)
    }
    report = json.loads((tmp_path / "out/good_report.json").read_text())
    assert report["orchestration"] == "prefect"  # a tracked flow run, and the report says so
    areas = ", ".join(f"{c['name']} {c['area_ha']:g} ha" for c in report["classes"])
    assert len(report["classes"]) == 2 and rows["good"]["classes"] == areas  # the areas of the report
    assert rows["good"]["status"] == "ok" and rows["good"]["windows"] == report["windows_computed"] > 0
    assert rows["broken"]["status"] == "failed" and "broken.tif" in rows["broken"]["outputs_or_reason"]


def test_scenes_in_flight_together_are_task_runs_of_the_same_flow_run(
    tmp_path, data, small_bundle, monkeypatch
):
    """With a cluster executor several scenes run at once (as run_job does); each is still a task
    run of this flow run, and the summary keeps the scene order."""
    import flows.folder as folder
    from pipeline.job.config import load_config

    src = tmp_path / "in"
    src.mkdir()
    for name in ("b.tif", "a.tif", "c.tif"):
        (src / name).write_bytes((data / "geo/rasterio/rgb-byte-tenth.tif").read_bytes())
    monkeypatch.setattr(folder, "scenes_in_flight", lambda executor, n: 2)
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


def test_tilewise_run_reads_the_bundle_once_and_opens_the_scene_once(
    tmp_path, data, small_bundle, monkeypatch
):
    """One ``tilewise run`` of one scene, through the CLI and the folder flow it starts: every file of
    the bundle is read from disk once (config, weights, hash included), and the scene is opened once."""
    import sys

    from typer.testing import CliRunner

    import pipeline.formats.source as source_module
    from flows.cli.app import app

    src = tmp_path / "in"
    src.mkdir()
    (src / "scene.tif").write_bytes((data / "geo/rasterio/rgb-byte-tenth.tif").read_bytes())
    bundle_dir = Path(small_bundle).resolve()
    reads: Counter[str] = Counter()
    counting = [True]

    def audit(event: str, args: tuple) -> None:
        if counting[0] and event == "open" and isinstance(args[0], (str, Path)):
            path = Path(args[0]).resolve() if str(args[0]).startswith("/") else None
            if path is not None and path.parent == bundle_dir and (args[1] or "r").startswith("r"):
                reads[path.name] += 1

    sys.addaudithook(audit)  # hooks cannot be removed: ``counting`` switches this one off below
    for name, module in list(sys.modules.items()):  # weights read behind Python's back would not count
        if name.startswith("models.bundle"):
            for reader in ("load_file", "safe_open"):
                if hasattr(module, reader):
                    monkeypatch.setattr(module, reader, lambda *a, **k: reads.update(["native read"]))
    opened: list[str] = []
    real_open_source = source_module.open_source

    def open_source(source):
        opened.append(source.uri)
        return real_open_source(source)

    monkeypatch.setattr(source_module, "open_source", open_source)
    try:
        res = CliRunner().invoke(app, ["run", str(src), str(tmp_path / "out"), "-m", str(small_bundle)])
    finally:
        counting[0] = False
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out/scene_labels.tif").exists()
    assert set(reads) == {"model.yaml", "weights.safetensors"}, reads
    assert all(n == 1 for n in reads.values()), reads
    assert opened == [str(src / "scene.tif")]

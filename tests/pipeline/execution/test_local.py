"""The in-process executor: it reads from the scene it is handed (or opens and closes its own), builds
the model only when blocks are left to compute, and its sweep gives the labels of ``infer_labels``."""

from __future__ import annotations

import numpy as np

from models.bundle import load_bundle
from pipeline.engine.arrays import infer_labels
from pipeline.engine.predictor import Predictor
from pipeline.execution.local import LocalExecutor
from pipeline.execution.preprocess import Preprocessor
from pipeline.execution.tasks import SceneTask
from pipeline.execution.workstore import WorkStore
from pipeline.formats.source import SceneSource

TENTH = "geo/rasterio/rgb-byte-tenth.tif"


def _task(data, tmp_path, bundle, scene) -> SceneTask:
    task = SceneTask(
        source=SceneSource("geotiff", (str(data / TENTH),)),
        bundle_path=str(bundle.path),
        bundle_hash=bundle.hash,
        work_dir=str(tmp_path / "work"),
        spatial_shape=tuple(scene.shape[1:]),
        patch_size=(64, 64),
        overlap=0.25,
        block_size=(64, 64),
        classes=bundle.num_classes,
        preprocessor=Preprocessor.from_bundle(bundle, scene),
        activation="none",
    )
    shape = task.spatial_shape
    WorkStore(task.work_dir).prepare({"t": 1}, shape, task.block_size, task.classes, False)
    return task


class Counting:
    def __init__(self, model) -> None:
        self.model, self.windows = model, 0

    def __call__(self, x):
        self.windows += x.shape[0]
        return self.model(x)


def test_sweep_reads_the_scene_it_is_handed_and_equals_infer_labels(
    tmp_path, data, bundle_factory, monkeypatch
):
    bundle = load_bundle(bundle_factory(2, 3, ["land", "water"], 64, [4, 8]))
    scene = SceneSource("geotiff", (str(data / TENTH),)).open()
    task = _task(data, tmp_path, bundle, scene)
    monkeypatch.setattr(SceneSource, "open", lambda self: (_ for _ in ()).throw(AssertionError("reopened")))
    built: list[int] = []
    net = bundle.build()
    counting = Counting(net)

    def build():
        built.append(1)
        return counting

    stats = LocalExecutor(build=build).run(task, scene=scene)
    assert built == [1] and stats.windows == task.plan.window_count == counting.windows
    labels = np.asarray(WorkStore(task.work_dir).labels("r")[...])
    pre, whole = task.preprocessor, task.plan.scene
    raw = pre.select(scene.read(whole))
    invalid = pre.invalid(raw, scene.read_nodata(whole), selected=True)
    assert 0 < invalid.mean() < 1  # the scene has a nodata collar: both cases are compared
    image = pre.prepare(raw, invalid)
    want = infer_labels(image, Predictor(net, activation="none"), patch_size=64, block_size=64, mask=invalid)
    assert np.array_equal(labels, want)
    again = LocalExecutor(build=build).run(task, scene=scene)  # every block merged: nothing to build
    assert built == [1] and again.windows == 0
    scene.close()


def test_without_a_scene_it_opens_and_closes_its_own(tmp_path, data, bundle_factory, monkeypatch):
    bundle = load_bundle(bundle_factory(2, 3, ["land", "water"], 64, [4, 8]))
    probe = SceneSource("geotiff", (str(data / TENTH),)).open()
    task = _task(data, tmp_path, bundle, probe)
    probe.close()
    events: list[str] = []
    real_open = SceneSource.open

    def open_and_watch(self):
        scene = real_open(self)
        real_close = scene.close
        events.append("open")
        scene.close = lambda: (events.append("close"), real_close())[1]
        return scene

    monkeypatch.setattr(SceneSource, "open", open_and_watch)
    LocalExecutor(bundle.build()).run(task)
    assert events == ["open", "close"]

"""--model takes a model as its users keep it: the kind comes from the path; errors list what is accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.bundle.sources import ModelSource, model_kind, open_model, register
from pipeline.errors import BundleError


def test_a_tilewise_bundle_is_found_by_its_folder_or_its_model_yaml(bundle_factory) -> None:
    folder = bundle_factory(2, 3, ["a", "b"], 32)
    assert model_kind(folder) == model_kind(folder / "model.yaml") == "tilewise"
    bundle = open_model(folder / "model.yaml")
    assert bundle.class_names == ["a", "b"] and bundle.path == folder


def test_an_unknown_folder_says_what_is_accepted(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"no model\.yaml in the folder.*tilewise bundle folder") as err:
        open_model(tmp_path)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(BundleError, match="model not found"):
        open_model(tmp_path / "missing")


def test_options_a_kind_does_not_take_are_refused(bundle_factory) -> None:
    folder = bundle_factory(2, 3, ["a", "b"], 32)
    with pytest.raises(BundleError, match="folds do not apply to a tilewise bundle"):
        open_model(folder, options={"folds": [0, 1]})
    assert open_model(folder, options={"folds": None}).num_classes == 2  # unset options are no options


def test_a_registered_kind_is_tried_in_order(tmp_path: Path, bundle_factory) -> None:
    marker = tmp_path / "thing.special"
    marker.write_text("x")
    folder = bundle_factory(2, 3, ["a", "b"], 32)
    calls: list[Path] = []

    def load(path: Path, *, trust_pickle: bool, options: dict) -> object:
        calls.append(path)
        return open_model(folder)

    register(ModelSource("special", lambda p: p.suffix == ".special", load, "a .special file"))
    try:
        assert model_kind(marker) == "special"
        assert open_model(marker).num_classes == 2 and calls == [marker]
    finally:
        from models.bundle import sources

        sources.SOURCES[:] = [s for s in sources.SOURCES if s.kind != "special"]

"""Passes over a whole scene: sampling stays inside the scene and within its budget."""

from __future__ import annotations

import math

import pytest

from pipeline.core.box import Box
from pipeline.execution.scene_passes import sample_boxes


@pytest.mark.parametrize("shape", [(1000, 1000), (5, 100000), (40, 300, 500), (7,)])
def test_sample_boxes_stay_inside_and_within_budget(shape: tuple[int, ...]) -> None:
    budget = 1 << 14
    boxes = sample_boxes(shape, budget)
    scene_box = Box.from_shape(shape)
    assert all(scene_box.contains(b) and not b.empty for b in boxes)
    assert sum(b.size for b in boxes) <= budget
    if math.prod(shape) <= budget:
        assert boxes == [scene_box]
    assert len(set(boxes)) == len(boxes)

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.box import Box


@st.composite
def boxes(draw, dims=2):
    start = [draw(st.integers(-5, 20)) for _ in range(dims)]
    return Box(tuple(start), tuple(s + draw(st.integers(0, 15)) for s in start))


@given(boxes(), boxes())
def test_difference_is_disjoint_cover(outer, inner):
    origin = (-10, -10)
    grid = np.zeros((50, 50), int)
    for piece in outer.difference(inner):
        assert outer.contains(piece) and not piece.empty
        grid[piece.slices(origin)] += 1
    expect = np.zeros_like(grid)
    expect[outer.slices(origin)] = 1
    expect[outer.intersect(inner).slices(origin)] = 0
    assert (grid == expect).all()


@given(boxes(3), boxes(3))
def test_intersect_contained_in_both(a, b):
    c = a.intersect(b)
    assert c.empty or (a.contains(c) and b.contains(c))

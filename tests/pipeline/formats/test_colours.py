"""The one colour rule: given colours kept, every accepted spelling parsed, defaults stable and distinct."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import ConfigError
from pipeline.formats.colours import (
    TABLEAU_10,
    TRANSPARENT,
    UNUSED,
    class_rgba,
    default_color,
    palette,
    parse_color,
    to_hex,
)


@pytest.mark.parametrize(
    ("color", "rgba"),
    [
        ("#102030", (16, 32, 48, 255)),
        ("102030", (16, 32, 48, 255)),
        ("#10203040", (16, 32, 48, 64)),
        ("#ABCDEF", (171, 205, 239, 255)),
        ("#abc", (170, 187, 204, 255)),
        ("  #102030 ", (16, 32, 48, 255)),
        ("red", (255, 0, 0, 255)),
        ("Teal", (0, 128, 128, 255)),
        ((1, 2, 3), (1, 2, 3, 255)),
        ([1, 2, 3, 4], (1, 2, 3, 4)),
        ((0, 0, 0, 0), (0, 0, 0, 0)),
    ],
)
def test_every_spelling_parses(color: object, rgba: tuple[int, int, int, int]) -> None:
    assert parse_color(color) == rgba


@pytest.mark.parametrize(
    "bad", ["", "#12345", "#gg0000", "not-a-colour", (1, 2), (1, 2, 3, 4, 5), (0, 0, 256), (-1, 0, 0), [None]]
)
def test_bad_colours_are_config_errors(bad: object) -> None:
    with pytest.raises(ConfigError, match="colour"):
        parse_color(bad)


@given(st.tuples(*[st.integers(0, 255)] * 4))
def test_explicit_colours_are_kept_whatever_the_index(rgba: tuple[int, int, int, int]) -> None:
    hex8 = "#" + "".join(f"{v:02x}" for v in rgba)
    assert parse_color(rgba, index=0) == parse_color(hex8, index=7) == rgba
    assert parse_color(to_hex(rgba)) == (*rgba[:3], 255)


def test_default_rule_is_tableau_then_distinct_golden_hues() -> None:
    assert [default_color(i) for i in range(10)] == list(TABLEAU_10)
    first = [default_color(i) for i in range(256)]
    assert len(set(first)) == 256  # every uint8 class id gets its own colour
    assert first == [default_color(i) for i in range(256)]  # deterministic
    assert all(parse_color(c)[3] == 255 for c in first)
    with pytest.raises(ConfigError):
        default_color(-1)


def test_missing_colours_default_and_class_0_stays_clear() -> None:
    names = ["background", "water", "forest", "field"]
    got = class_rgba(names, ["#ff0000"])
    assert got[0] == (255, 0, 0, 255)  # given: kept, even for class 0
    assert got[1:] == [(*parse_color(default_color(i))[:3], 255) for i in (1, 2, 3)]
    assert class_rgba(names, None)[0] == (*parse_color(TABLEAU_10[0])[:3], 0)
    assert class_rgba(names, [None, "#00ff00"])[:2] == [parse_color(None, index=0), (0, 255, 0, 255)]
    assert class_rgba(names, ["#000000"] * 6) == [(0, 0, 0, 255)] * 4  # extra colours are ignored


def test_exact_demands_one_colour_per_class() -> None:
    with pytest.raises(ConfigError, match="2 colours for 3 classes"):
        class_rgba(["a", "b", "c"], ["red", "blue"], exact=True)
    assert len(class_rgba(["a", "b"], ["red", "blue"], exact=True)) == 2


def test_palette_has_256_entries_and_a_clear_nodata() -> None:
    colors = class_rgba(["a", "b"], [(1, 2, 3), (4, 5, 6, 7)])
    cmap = palette(colors, nodata=255)
    assert sorted(cmap) == list(range(256))
    assert cmap[0] == (1, 2, 3, 255) and cmap[1] == (4, 5, 6, 7)
    assert cmap[2] == UNUSED and cmap[255] == TRANSPARENT
    assert palette(colors)[255] == UNUSED
    with pytest.raises(ConfigError):
        palette([(0, 0, 0, 255)] * 257)

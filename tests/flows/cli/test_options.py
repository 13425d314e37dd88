"""Shared option parsing (flows/cli/options.py)."""

from __future__ import annotations

import pytest
import typer

from flows.cli.options import int_list, model_options


def test_int_list_takes_commas_or_x():
    assert int_list(None, "--patch-size") is None
    assert int_list("256", "--patch-size") == [256]
    assert int_list("96,96, 96", "--patch-size") == int_list("96x96x96", "--patch-size") == [96, 96, 96]
    assert int_list("0,-1", "--flip-axes") == [0, -1]


@pytest.mark.parametrize(
    ("text", "positive", "words"),
    [
        ("8,y", False, "comma-separated integers"),
        ("4,x", False, "comma-separated integers"),
        ("64,", False, "comma-separated integers"),
        ("", False, "comma-separated integers"),
        ("4,0", True, "positive integers"),
    ],
)
def test_int_list_names_the_option_it_refuses(text, positive, words):
    with pytest.raises(typer.BadParameter, match=words) as caught:
        int_list(text, "--features", positive=positive)
    assert caught.value.param_hint == "--features"


def test_nnunet_model_options_take_the_accumulation():
    assert model_options(None, None, None) is None
    assert model_options("0,1", "best", False, accumulate="float32") == {
        "folds": [0, 1], "checkpoint": "best", "mirroring": False, "accumulate": "float32"
    }  # fmt: skip
    with pytest.raises(typer.BadParameter, match="nnunet or float32"):
        model_options(None, None, None, accumulate="float64")

"""Fast transposed convs (sub-pixel and tap-wise): the same numbers as ConvTranspose for any geometry,
chosen by a shape rule, swapped in and out of a shared model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from monai.networks.nets import UNet as MonaiUNet

from models.nets.unet import UNet
from pipeline.engine.predictor import Predictor
from pipeline.engine.subpixel import SubPixelTransposedConv, SubPixelUpsampling, fast_form, is_rewritable
from pipeline.engine.tapwise import TapwiseTransposedConv
from tests.model_wrappers import Counting


@st.composite
def transposed_convs(draw: st.DrawFn) -> tuple[torch.nn.Module, torch.Tensor]:
    dims = draw(st.sampled_from([2, 3]))
    kernel = draw(st.lists(st.integers(1, 5), min_size=dims, max_size=dims))
    stride = draw(st.lists(st.integers(1, 3), min_size=dims, max_size=dims))
    padding = [draw(st.integers(0, k - 1)) for k in kernel]
    output_padding = [draw(st.integers(0, s - 1)) for s in stride]
    size = [draw(st.integers(1, 7)) for _ in range(dims)]
    geometry = zip(size, stride, padding, kernel, output_padding, strict=True)
    assume(all((n - 1) * s - 2 * p + k + op >= 1 for n, s, p, k, op in geometry))  # a non-empty output
    cin, cout = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    cls = torch.nn.ConvTranspose2d if dims == 2 else torch.nn.ConvTranspose3d
    torch.manual_seed(draw(st.integers(0, 1000)))
    conv = cls(cin, cout, kernel, stride, padding, output_padding, bias=draw(st.booleans()))
    return conv.eval(), torch.randn(2, cin, *size)


@settings(max_examples=150, deadline=None)
@given(transposed_convs(), st.sampled_from([SubPixelTransposedConv, TapwiseTransposedConv]))
def test_fast_forms_equal_the_transposed_conv_for_any_geometry(
    case: tuple[torch.nn.Module, torch.Tensor], form: type
) -> None:
    conv, x = case
    with torch.inference_mode():
        expected = conv(x)
        got = form(conv)(x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("form", [SubPixelTransposedConv, TapwiseTransposedConv])
def test_a_window_gets_the_same_bytes_whatever_else_is_in_its_batch(form: type) -> None:
    """Batches span blocks differently for each block size: a window's result must not notice."""
    torch.manual_seed(2)
    conv = torch.nn.ConvTranspose2d(32, 2, 3, stride=2, padding=1, output_padding=1).eval()
    x = torch.randn(5, 32, 40, 24)
    with torch.inference_mode():
        whole = form(conv)(x)
        for i in range(5):
            assert torch.equal(form(conv)(x[i : i + 1]), whole[i : i + 1])
        assert torch.equal(form(conv)(x[1:4]), whole[1:4])


@pytest.mark.parametrize("form", [SubPixelTransposedConv, TapwiseTransposedConv])
def test_output_size_falls_back_to_the_original(form: type) -> None:
    conv = torch.nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1).eval()
    x = torch.randn(1, 3, 5, 5)
    with torch.inference_mode():
        expected = conv(x, output_size=[10, 10])
        assert torch.equal(form(conv)(x, output_size=[10, 10]), expected)


def test_rule_takes_narrow_strided_layers_only() -> None:
    ct2, ct3 = torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d
    # MONAI's 2-D U-Net (16, 32, 64, 128): only its 32 -> 2 last layer is rewritten, tap-wise
    assert fast_form(ct2(32, 2, 3, stride=2, padding=1, output_padding=1)) is TapwiseTransposedConv
    assert fast_form(ct2(64, 16, 3, stride=2)) is None  # 64 stacked, 1.8x the multiply-adds
    assert fast_form(ct2(192, 32, 3, stride=2)) is None  # 128 stacked
    # a narrow input makes a flat GEMM: sub-pixel; as does a kernel that is a multiple of the stride
    assert fast_form(ct2(16, 2, 3, stride=2)) is SubPixelTransposedConv
    assert fast_form(ct2(32, 16, 2, stride=2)) is SubPixelTransposedConv  # 64 stacked, no extra work
    assert fast_form(ct2(16, 3, 4, stride=2)) is SubPixelTransposedConv
    # 3-D keeps sub-pixel up to 64 stacked outputs
    assert fast_form(ct3(16, 2, 3, stride=2)) is SubPixelTransposedConv
    assert fast_form(ct3(16, 8, 3, stride=2)) is SubPixelTransposedConv  # 8 * 8
    assert fast_form(ct3(96, 16, 3, stride=2)) is None  # 16 * 8
    unstrided = ct2(8, 2, 3)
    grouped = ct2(8, 4, 3, stride=2, groups=2)
    dilated = ct3(8, 2, 3, stride=2, dilation=2)
    assert not any(is_rewritable(m) for m in (unstrided, grouped, dilated))


def _swapped(model: torch.nn.Module) -> int:
    return sum("forward" in vars(m) for m in model.modules())


def test_swap_lasts_while_entered_and_follows_weight_updates() -> None:
    torch.manual_seed(0)
    net = MonaiUNet(2, 1, 2, channels=(16, 32, 64, 128), strides=(2, 2, 2)).eval()
    fast = SubPixelUpsampling(net)
    assert len(fast.layers) == 1  # 32->2; the 64->16 and 192->32 layers run as fast unchanged
    x = torch.randn(2, 1, 64, 40)
    with torch.inference_mode():
        plain = net(x)
        with fast:
            assert _swapped(net) == 1
            np.testing.assert_allclose(net(x).numpy(), plain.numpy(), rtol=0, atol=1e-5)
        assert _swapped(net) == 0 and torch.equal(net(x), plain)
    with torch.no_grad():  # a training step in place: the swapped layers must follow it
        for p in net.parameters():
            p.mul_(1.5)
    with torch.inference_mode(), fast:
        np.testing.assert_allclose(net(x).numpy(), _plain(net, x).numpy(), rtol=0, atol=1e-4)


def _plain(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    saved = {m: vars(m).pop("forward") for m in net.modules() if "forward" in vars(m)}
    try:
        return net(x)
    finally:
        for m, forward in saved.items():
            m.forward = forward


def test_overlapping_callers_share_one_swap_until_the_last_leaves() -> None:
    net = UNet(2, 1, 2, features=(4, 8), upsample="transposed").eval()
    first = SubPixelUpsampling(net)
    layers = len(first.layers)
    assert layers == 2
    with first:
        second = SubPixelUpsampling(net)  # made while the first is running: the swap is ours, not foreign
        assert len(second.layers) == layers
        with second:
            assert _swapped(net) == layers
        assert _swapped(net) == layers  # the first caller is still running on it
    assert _swapped(net) == 0


def test_a_forward_someone_else_shadowed_is_left_to_them() -> None:
    net = UNet(2, 1, 2, features=(4, 8), upsample="transposed").eval()
    layer = next(m for m in net.modules() if is_rewritable(m))

    def theirs(x: torch.Tensor) -> torch.Tensor:
        return x

    layer.forward = theirs  # a user's own patch
    assert len(SubPixelUpsampling(net).layers) == 1  # the other narrow layer only
    with SubPixelUpsampling(net):
        assert vars(layer)["forward"] is theirs
    assert vars(layer)["forward"] is theirs


def test_models_without_narrow_transposed_convs_are_left_alone() -> None:
    interp = UNet(2, 1, 2, features=(4, 8), upsample="bilinear").eval()
    assert not SubPixelUpsampling(interp)


def test_predictor_swaps_on_cpu_unless_told_not_to_and_keeps_the_callers_model() -> None:
    torch.manual_seed(0)
    counting = Counting(UNet(3, 1, 3, features=(4, 8, 8), upsample="transposed").eval())
    fast, plain = Predictor(counting), Predictor(counting, subpixel=False)
    assert fast.model is counting and fast._subpixel and plain._subpixel is None
    batch = np.random.default_rng(0).normal(size=(2, 1, 19, 21, 23)).astype(np.float32)
    np.testing.assert_allclose(fast(batch), plain(batch), rtol=0, atol=1e-5)
    assert counting.windows == 4  # a wrapper's own state sees every call
    assert _swapped(counting) == 0

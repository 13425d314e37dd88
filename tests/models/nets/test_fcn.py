"""FCN-32s/16s/8s: score maps at full input resolution for any size, with working skip fusion."""

from __future__ import annotations

import pytest
import torch

from models.nets.fcn import FCN, VARIANTS, bilinear_kernel, upsampler

TINY = (2, 4, 4, 8, 8)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("shape", [(37, 53), (1, 1), (32, 32), (65, 7)])
def test_2d_output_shape_equals_input(variant: str, shape: tuple[int, int]) -> None:
    net = FCN(2, in_channels=3, out_channels=4, variant=variant, features=TINY).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, *shape))
    assert out.shape == (2, 4, *shape)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_3d_output_shape_equals_input(variant: str) -> None:
    net = FCN(3, in_channels=1, out_channels=2, variant=variant, features=(2, 2, 4, 4, 4)).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 19, 23, 29)).shape == (1, 2, 19, 23, 29)


def test_default_backbone_is_vgg_like() -> None:
    net = FCN()
    convs = [sum(isinstance(m, torch.nn.Conv2d) for m in stage) for stage in net.stages]
    assert convs == [2, 2, 3, 3, 3]
    assert net.multiple == 32
    assert len(net.skip_scores) == 2  # 8s: pool4 and pool3


def test_skip_layers_get_gradients_in_8s() -> None:
    torch.manual_seed(0)
    net = FCN(2, 1, 2, variant="8s", features=TINY).train()
    net(torch.randn(2, 1, 40, 40)).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # zero-initialised skip scores still receive gradient, so fusion can be learnt
    assert all(s.weight.grad.abs().sum() > 0 for s in net.skip_scores)


def test_skip_fusion_changes_output_once_trained() -> None:
    torch.manual_seed(0)
    net = FCN(2, 1, 2, variant="16s", features=TINY).eval()
    x = torch.randn(1, 1, 32, 32)
    before = net(x).detach()
    with torch.no_grad():
        net.skip_scores[0].weight.fill_(0.5)
    assert not torch.allclose(before, net(x))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("factor", [2, 4, 8])
def test_upsampler_starts_as_linear_interpolation(dims: int, factor: int) -> None:
    up = upsampler(dims, 2, factor)
    x = torch.ones(1, 2, *([5] * dims))
    with torch.no_grad():
        y = up(x)
    assert y.shape[2:] == (5 * factor,) * dims
    inner = y[(slice(None), slice(None), *([slice(factor, -factor)] * dims))]
    assert torch.allclose(inner, torch.ones_like(inner), atol=1e-5)  # constants stay constant
    # channels do not mix
    w = bilinear_kernel(3, factor, dims)
    assert w[0, 1].abs().sum() == 0 and w[1, 1].sum() > 0


def test_variant_needs_enough_stages() -> None:
    with pytest.raises(ValueError, match="8s"):
        FCN(features=(4, 8))
    with pytest.raises(ValueError):
        FCN(variant="4s")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        FCN(features=TINY, convs_per_stage=(1, 2))
    FCN(features=(4,), variant="32s", convs_per_stage=1)

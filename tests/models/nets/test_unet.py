"""U-Net: any input size in, same spatial size out, in 2-D and 3-D, for every upsampling mode."""

from __future__ import annotations

import pytest
import torch

from models.nets.unet import UPSAMPLE_MODES, UNet, crop_to, pad_to_multiple

WIDTHS = (2, 4, 4, 8)


@pytest.mark.parametrize("upsample", UPSAMPLE_MODES)
@pytest.mark.parametrize("depth", [2, 3, 4])
def test_2d_odd_size_keeps_shape(upsample: str, depth: int) -> None:
    net = UNet(2, in_channels=3, out_channels=5, features=WIDTHS[:depth], upsample=upsample).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 37, 53))
    assert out.shape == (2, 5, 37, 53)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("upsample", UPSAMPLE_MODES)
@pytest.mark.parametrize("depth", [2, 3, 4])
def test_3d_odd_size_keeps_shape(upsample: str, depth: int) -> None:
    net = UNet(3, in_channels=1, out_channels=3, features=WIDTHS[:depth], upsample=upsample).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, 19, 23, 29))
    assert out.shape == (1, 3, 19, 23, 29)


@pytest.mark.parametrize("shape", [(1, 1), (16, 16), (17, 1), (64, 33)])
def test_degenerate_and_exact_sizes(shape: tuple[int, int]) -> None:
    net = UNet(2, 1, 2, features=(2, 4, 4), pad_mode="zeros").eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, *shape)).shape == (1, 2, *shape)


def test_seed_defaults_transposed_and_bottleneck_doubles() -> None:
    net = UNet()
    assert net.bottleneck[0].out_channels == 2 * 256
    assert isinstance(net.ups[0], torch.nn.ConvTranspose2d)
    assert net.final_conv.out_channels == 2


def test_pad_and_crop_are_inverse_and_replicate_edges() -> None:
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(1, 2, 3, 5)
    padded = pad_to_multiple(x, 4, "replicate")
    assert padded.shape == (1, 2, 4, 8)
    assert torch.equal(padded[..., :3, :5], x)  # original stays at the origin
    assert torch.equal(padded[..., 3, :5], x[..., 2, :])  # replicated last row
    assert torch.equal(padded[..., :3, 7], x[..., :, 4])
    assert torch.equal(crop_to(padded, (3, 5)), x)
    zeros = pad_to_multiple(x, 4, "zeros")
    assert zeros[..., 3:, :].abs().sum() == 0
    exact = torch.zeros(1, 1, 8, 4)
    assert pad_to_multiple(exact, 4) is exact  # no copy when nothing to pad


def test_output_does_not_depend_on_batch_neighbours_in_eval() -> None:
    torch.manual_seed(0)
    net = UNet(2, 1, 2, features=(4, 8)).eval()
    a, b = torch.randn(1, 1, 21, 21), torch.randn(1, 1, 21, 21)
    with torch.no_grad():
        both = net(torch.cat([a, b]))
        assert torch.allclose(both[:1], net(a), atol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("upsample", ["transposed", "interp"])
def test_gradients_reach_every_parameter(dims: int, upsample: str) -> None:
    torch.manual_seed(0)
    net = UNet(dims, 2, 3, features=(2, 4), upsample=upsample).train()
    x = torch.randn(2, 2, *([13] * dims), requires_grad=True)
    net(x).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("upsample", ["transposed", "bilinear"])
def test_both_upsampling_modes_learn_a_segmentation(upsample: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 1, 16, 16)
    target = (x[:, 0] > 0).long()  # learnable: threshold the input
    net = UNet(2, 1, 2, features=(4, 8), upsample=upsample, norm="instance")
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    acc = (net.eval()(x).argmax(1) == target).float().mean()
    assert acc > 0.9


def test_transposed_and_interp_differ_in_parameters() -> None:
    t = sum(p.numel() for p in UNet(2, 1, 2, features=(4, 8), upsample="transposed").parameters())
    i = sum(p.numel() for p in UNet(2, 1, 2, features=(4, 8), upsample="bilinear").parameters())
    assert t != i


@pytest.mark.parametrize(
    "kwargs",
    [
        {"spatial_dims": 1},
        {"spatial_dims": 4},
        {"features": ()},
        {"features": (4, 0)},
        {"upsample": "nearest"},
        {"norm": "layer"},
        {"pad_mode": "reflect"},
        {"in_channels": 0},
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        UNet(**kwargs)  # type: ignore[arg-type]

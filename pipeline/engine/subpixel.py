"""Narrow strided transposed convolutions, run on CPU in a faster form with the same numbers.

On CPU, PyTorch runs a transposed convolution as a GEMM followed by col2im, and col2im dominates
when the layer has few output channels: the last up-convolutions of a U-Net, which run at the
highest resolution. Two exact rewrites beat it there:

- "sub-pixel" (here): output pixel ``o = q*s + r`` (phase ``r``) is a plain correlation of the
  input around ``q`` with the kernel taps of that phase, so all phases stack into one ordinary
  convolution with ``out_channels * prod(stride)`` outputs, interleaved afterwards;
- "tap-wise" (:mod:`pipeline.engine.tapwise`): one batched GEMM over every kernel tap, then a strided add
  per tap.

Both equal the transposed convolution up to float rounding (~1e-7 per layer). Which layer gets
which is a fixed rule on the layer's shape (:func:`fast_form`), never a timing taken at run time:
every worker then runs the same arithmetic, so a scene split over workers stays byte-identical.
The rule comes from timings of MONAI's and our U-Nets on 2 CPU cores, inside the full forward:

- 2-D, a wide input and at most 32 output taps (``out_channels * prod(kernel)``; MONAI's 32 -> 2
  last layer): tap-wise. In the forward of MONAI's (16, 32, 64, 128) U-Net that layer took 6.0 ms
  as a sub-pixel conv (oneDNN runs an 8-output conv poorly) and 2.5 ms tap-wise;
- otherwise sub-pixel where the stacked outputs stay few: up to 32, or up to 64 when in 3-D or
  when the kernel is a multiple of the stride (then stacking adds no multiply-adds). A 2-D 3x3,
  stride-2 layer with 16 outputs stacks into a 2x2 kernel with 64 outputs and 1.8x the
  multiply-adds: it ran 3.2 ms unchanged and 5.6 ms stacked, so it stays as it is;
- anything wider runs unchanged.
"""

from __future__ import annotations

import itertools
import math
import threading

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.engine.tapwise import TapwiseTransposedConv

MAX_STACKED_OUTPUTS = 64
MAX_STACKED_OVERLAPPING_2D = 32  # a 2-D kernel that is no multiple of its stride
MAX_TAPWISE_OUTPUTS = 32  # out_channels * prod(kernel)
MIN_TAPWISE_INPUTS = 32  # a narrower input gives a GEMM too flat to beat the sub-pixel conv

_TransposedConv = nn.ConvTranspose2d | nn.ConvTranspose3d


def offsets(kernel: int, stride: int, padding: int) -> tuple[int, int]:
    """Input offsets ``d`` (relative to ``q``) that any phase of one axis reads: ``(lowest, highest)``.

    Phase ``r`` of output ``q*s + r`` takes input ``q + d`` through tap ``r + padding - d*s``, for
    the ``d`` whose tap lies in ``[0, kernel)``.
    """
    low = min(math.ceil((r + padding - (kernel - 1)) / stride) for r in range(stride))
    high = max((r + padding) // stride for r in range(stride))
    return low, high


def fast_form(module: nn.Module) -> type[SubPixelTransposedConv] | type[TapwiseTransposedConv] | None:
    """The rule: which rewrite a layer gets, from its shape alone (None: it runs unchanged)."""
    if not (
        isinstance(module, _TransposedConv)
        and module.groups == 1
        and all(d == 1 for d in module.dilation)
        and any(s > 1 for s in module.stride)
    ):
        return None
    dims = len(module.stride)
    taps = module.out_channels * math.prod(module.kernel_size)
    if dims == 2 and taps <= MAX_TAPWISE_OUTPUTS and module.in_channels >= MIN_TAPWISE_INPUTS:
        return TapwiseTransposedConv
    stacked = module.out_channels * math.prod(module.stride)
    fits = all(k % s == 0 for k, s in zip(module.kernel_size, module.stride, strict=True))
    limit = MAX_STACKED_OUTPUTS if dims == 3 or fits else MAX_STACKED_OVERLAPPING_2D
    return SubPixelTransposedConv if stacked <= limit else None


def is_rewritable(module: nn.Module) -> bool:
    return fast_form(module) is not None


class SubPixelTransposedConv:
    """Runs ``original`` (a ConvTranspose2d/3d) as a sub-pixel convolution; a drop-in ``forward``.

    The stacked kernel is gathered from ``original.weight`` on every call (a few thousand numbers),
    so it follows any in-place update of the original's parameters.
    """

    def __init__(self, original: nn.ConvTranspose2d | nn.ConvTranspose3d) -> None:
        self.original = original
        dims = original.weight.ndim - 2
        self.conv = F.conv2d if dims == 2 else F.conv3d
        spans = [
            offsets(k, s, p)
            for k, s, p in zip(original.kernel_size, original.stride, original.padding, strict=True)
        ]
        self.low = [low for low, _ in spans]
        self.high = [high for _, high in spans]
        self.index = self._gather_index(spans)

    def _gather_index(self, spans: list[tuple[int, int]]) -> torch.Tensor:
        """Flat positions in ``[weight..., 0]`` for the stacked kernel ``(out*phases, in, *taps)``."""
        ct = self.original
        cin, cout = ct.weight.shape[:2]
        kernel, stride, padding = ct.kernel_size, ct.stride, ct.padding
        taps = [high - low + 1 for low, high in spans]
        zero = ct.weight.numel()
        strides = [math.prod(ct.weight.shape[a + 1 :]) for a in range(ct.weight.ndim)]  # of reshape(-1)
        channels = torch.arange(cout)[:, None] * strides[1] + torch.arange(cin)[None, :] * strides[0]
        index = torch.full((cout, *stride, cin, *taps), zero, dtype=torch.long)
        for phase in itertools.product(*(range(s) for s in stride)):
            for tap in itertools.product(*(range(t) for t in taps)):
                source = [
                    r + p - (j + low) * s
                    for r, p, j, (low, _), s in zip(phase, padding, tap, spans, stride, strict=True)
                ]
                if all(0 <= t < k for t, k in zip(source, kernel, strict=True)):
                    base = sum(t * st for t, st in zip(source, strides[2:], strict=True))
                    where = (slice(None), *phase, slice(None), *tap)
                    index[where] = channels + base
        return index.reshape(cout * math.prod(stride), cin, *taps)

    def __call__(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        ct = self.original
        if output_size is not None:
            return type(ct).forward(ct, x, output_size)
        stride = ct.stride
        n, cout = x.shape[0], ct.out_channels
        sizes = x.shape[2:]
        geometry = zip(sizes, stride, ct.padding, ct.kernel_size, ct.output_padding, strict=True)
        out = [(size - 1) * s - 2 * p + k + op for size, s, p, k, op in geometry]
        if min(out) <= 0:
            return type(ct).forward(ct, x)  # an empty output: the original says what is wrong
        per_phase = [-(-o // s) for o, s in zip(out, stride, strict=True)]
        pads = [
            max(0, -low, q + high - size)
            for low, high, q, size in zip(self.low, self.high, per_phase, sizes, strict=True)
        ]
        flat = torch.cat([ct.weight.reshape(-1), ct.weight.new_zeros(1)])
        bias = None if ct.bias is None else ct.bias.repeat_interleave(math.prod(stride))
        y = self.conv(x, flat[self.index], bias, padding=pads)
        keep = (slice(p + low, p + low + q) for p, low, q in zip(pads, self.low, per_phase, strict=True))
        y = y[(slice(None), slice(None), *keep)]
        dims = len(stride)
        y = y.reshape(n, cout, *stride, *per_phase)
        # (n, c, s0.., q0..) -> (n, c, q0, s0, q1, s1, ..): each phase lands between its neighbours
        order = [0, 1, *itertools.chain.from_iterable((2 + dims + a, 2 + a) for a in range(dims))]
        y = y.permute(order).reshape(n, cout, *(q * s for q, s in zip(per_phase, stride, strict=True)))
        return y[(slice(None), slice(None), *(slice(0, o) for o in out))]


class SubPixelUpsampling:
    """While entered, the model's rewritable transposed convs run in their fast form (``fast_form``).

    The caller's model is neither copied nor rebuilt: a copy would lose whatever state a wrapper
    keeps (a window counter, say). Each layer's ``forward`` is shadowed on the instance for the
    duration, counted across threads so that concurrent callers share one swap and the last one out
    restores the layer.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = [
            (m, form(m)) for m in model.modules() if (form := fast_form(m)) is not None and _unshadowed(m)
        ]

    def __bool__(self) -> bool:
        return bool(self.layers)

    def __enter__(self) -> SubPixelUpsampling:
        with _lock:
            for module, fast in self.layers:
                if _entered.setdefault(id(module), 0) == 0:
                    module.forward = fast  # type: ignore[method-assign]
                _entered[id(module)] += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with _lock:
            for module, _ in self.layers:
                _entered[id(module)] -= 1
                if _entered[id(module)] == 0:
                    del _entered[id(module)]
                    del module.forward


def _unshadowed(module: nn.Module) -> bool:
    """No instance ``forward``, or only ours: a forward someone else shadowed stays theirs."""
    shadow = vars(module).get("forward")
    return shadow is None or isinstance(shadow, (SubPixelTransposedConv, TapwiseTransposedConv))


_lock = threading.Lock()
_entered: dict[int, int] = {}

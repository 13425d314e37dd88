"""Runs batches of windows through a model: device choice, AMP, pinned transfers, TTA, activation."""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pipeline.engine.buffers import BufferPool, results_pool
from pipeline.engine.lanes import cpu_lanes
from pipeline.engine.subpixel import SubPixelUpsampling

ACTIVATIONS = ("none", "softmax", "sigmoid")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks the worker's own GPU (its CUDA_VISIBLE_DEVICES) when there is one."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA device is visible")
    return dev


class Predictor:
    """Callable ``(B, C, *patch) float32 ndarray -> (B, K, *patch) float32 ndarray``.

    ``model`` is any callable on torch tensors (an ``nn.Module`` is moved to the device and put in
    eval mode). On CPU, narrow strided transposed convolutions run as sub-pixel convolutions
    (:mod:`pipeline.engine.subpixel`: the same result to float rounding, faster) unless ``subpixel=False``.
    On CUDA up to ``streams`` batches are in flight, each on its own CUDA stream (one per calling
    thread: ``BlockRunner`` runs that many lanes), with page-locked host buffers for the batch and
    its result and non-blocking copies both ways, under autocast (bf16 where supported, else fp16);
    so one batch's copies overlap another's kernels. Outputs always come back as float32. With
    ``compile`` one stream is used (compilation is not meant to run from two threads at once). On
    CPU inside a ``BlockRunner``, the activation writes into the runner's kept result buffers
    (:mod:`pipeline.engine.buffers`) instead of fresh memory.

    ``lanes``: on CPU, how many batches an ``nn.Module`` runs at once, one thread each
    (:mod:`pipeline.engine.lanes`); ``None`` is torch's thread count. The module's ``forward`` is then called
    from several threads at once, so a module that keeps state of its own needs ``lanes=1`` or a lock.
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor], Any],
        *,
        device: str | torch.device = "cpu",
        amp: bool | str | None = None,
        tta: bool = False,
        activation: str = "none",
        subpixel: bool = True,
        lanes: int | None = None,
        channels_last: bool = False,
        compile: bool = False,
        streams: int = 2,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not one of {ACTIVATIONS}")
        self.device = resolve_device(device)
        cuda = self.device.type == "cuda"
        self.channels_last = channels_last and cuda  # CUDA options: the CPU path stays as it is
        if isinstance(model, torch.nn.Module):
            model = model.to(self.device).eval()
            if self.channels_last:
                model = model.to(memory_format=torch.channels_last)
        if compile and cuda:
            model = torch.compile(model)
        self.model = model
        module_on_cpu = self.device.type == "cpu" and isinstance(model, torch.nn.Module)
        self._subpixel = SubPixelUpsampling(model) if subpixel and module_on_cpu else None
        requested = cpu_lanes(lanes)  # checked on any device
        self.lanes = requested if module_on_cpu else 1
        # CUDA batches in flight, one stream each (0 on CPU: the CPU path is untouched)
        self.streams = (1 if compile else max(1, int(streams))) if cuda else 0
        self._own = threading.local()  # per calling thread: its stream and pinned buffers
        # amp: None = bf16 on CUDA where supported (else fp16), off on CPU; "bf16"/"fp16" pick the
        # dtype; activations and sums are float32 either way (the output is cast before blending)
        self.amp = cuda if amp is None else bool(amp) and (cuda or not isinstance(amp, str))
        if amp in ("bf16", "fp16"):
            self.amp_dtype = torch.bfloat16 if amp == "bf16" else torch.float16
        else:
            self.amp_dtype = (
                torch.bfloat16
                if cuda and torch.cuda.is_bf16_supported()
                else torch.float16
                if cuda
                else torch.bfloat16
            )
        self.tta = tta
        self.activation = activation
        self.calls = 0
        self.windows = 0
        self._count_lock = threading.Lock()  # lanes call concurrently

    def _to_device(self, batch: np.ndarray) -> torch.Tensor:
        """The batch as a CPU tensor (CUDA batches go through ``_on_stream``)."""
        return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))

    def _forward(self, x: torch.Tensor, pool: BufferPool | None = None) -> torch.Tensor:
        """The model's float32 output, activated; with ``pool``, into one of its buffers."""
        out = self.model(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        out = out.float()
        if self.activation == "none":
            return out
        dest = None
        if pool is not None and out.is_contiguous():  # the same kernel on the same layout: the same bits
            dest = torch.from_numpy(pool.take(tuple(out.shape)))
        if self.activation == "softmax":
            return torch.softmax(out, dim=1) if dest is None else torch.softmax(out, dim=1, out=dest)
        return torch.sigmoid(out) if dest is None else torch.sigmoid(out, out=dest)

    def _infer(self, x: torch.Tensor, pool: BufferPool | None = None) -> torch.Tensor:
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, self.amp_dtype, enabled=self.amp),
            self._subpixel or contextlib.nullcontext(),
        ):
            if not self.tta:
                return self._forward(x, pool)
            spatial = range(2, x.ndim)
            flips = [c for r in range(len(spatial) + 1) for c in itertools.combinations(spatial, r)]
            return sum(
                torch.flip(self._forward(torch.flip(x, f) if f else x), f) if f else self._forward(x)
                for f in flips
            ) / len(flips)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._count_lock:
            self.calls += 1
            self.windows += int(batch.shape[0])
        if self.streams:
            return self._on_stream(batch)
        # in a runner, the activation writes into its kept buffers (pipeline.engine.buffers): the
        # model's own output is freed at once, and the next batch's model output gets that memory
        pool = None if self.amp else results_pool()
        return self._infer(self._to_device(batch), pool).cpu().numpy()

    def _on_stream(self, batch: np.ndarray) -> np.ndarray:
        """One batch on this thread's CUDA stream: pinned in, non-blocking copies, pinned out."""
        own = self._own
        if getattr(own, "stream", None) is None:
            own.stream = torch.cuda.Stream(device=self.device)
            own.stream.wait_stream(torch.cuda.current_stream(self.device))  # the model's weights are there
            own.host_in = own.host_out = None
        if own.host_in is None or tuple(own.host_in.shape) != batch.shape:
            own.host_in = torch.empty(batch.shape, dtype=torch.float32, pin_memory=True)
        own.host_in.numpy()[...] = batch  # the last call synchronised: its copy from here is done
        with torch.cuda.stream(own.stream):
            x = own.host_in.to(self.device, non_blocking=True)
            if self.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            out = self._infer(x)
            if own.host_out is None or tuple(own.host_out.shape) != tuple(out.shape):
                own.host_out = torch.empty(tuple(out.shape), dtype=torch.float32, pin_memory=True)
            own.host_out.copy_(out, non_blocking=True)
        own.stream.synchronize()
        return own.host_out.numpy().copy()  # the buffer is this stream's next call's

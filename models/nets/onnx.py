"""ONNX models run by ONNX Runtime, behind the same ``(B, C, *patch) -> (B, K, *patch)`` call as a net.

A model exported from any framework runs here without that framework: the engine only calls the
model, so wrapping an ``InferenceSession`` as a module is all it takes. The session uses CUDA when
onnxruntime-gpu and a GPU are both there, CPU otherwise. A fixed batch dimension is honoured by
running the batch in slices of that size (a fixed batch of 1: one window at a time), the last slice
padded with zeros, so the engine's batching never has to know.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.errors import BundleError

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def providers(device: str | torch.device = "cpu") -> list[str]:
    """CUDA first when asked for and available in this onnxruntime build, CPU always as fallback."""
    import onnxruntime as ort

    wanted = torch.device(device).type == "cuda"
    return (
        [CUDA_PROVIDER, CPU_PROVIDER]
        if wanted and CUDA_PROVIDER in ort.get_available_providers()
        else [CPU_PROVIDER]
    )


def _dim(value: Any) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


class OnnxNet(nn.Module):
    """An ONNX model (its bytes) as a module; ``to(device)`` picks the execution provider."""

    def __init__(self, data: bytes, *, where: str = "model.onnx", device: str | torch.device = "cpu"):
        super().__init__()
        self.data, self.where = data, where
        self.session = self._session(device)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise BundleError(
                f"an ONNX segmentation model needs one input and an output, it has {len(inputs)} inputs",
                path=where,
            )
        self.input_name = inputs[0].name
        self.input_shape: list[int | None] = [_dim(d) for d in inputs[0].shape]
        self.output_shape: list[int | None] = [_dim(d) for d in outputs[0].shape]
        self.fixed_batch = self.input_shape[0] if self.input_shape else None

    def _session(self, device: str | torch.device) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        try:
            return ort.InferenceSession(self.data, sess_options=options, providers=providers(device))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... exceptions
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BundleError(f"not a model ONNX Runtime can run: {reason}", path=self.where) from exc

    def check(self, in_channels: int, out_channels: int, spatial_dims: int) -> None:
        """The file's rank, channels and classes (where fixed) against what its bundle says."""
        for what, shape, n in (("channels", self.input_shape, in_channels),
                               ("classes", self.output_shape, out_channels)):  # fmt: skip
            if len(shape) != spatial_dims + 2:
                raise BundleError(
                    f"a {spatial_dims}-D model takes {spatial_dims + 2}-D tensors, "
                    f"the file's are {len(shape)}-D",
                    path=self.where,
                )
            if shape[1] is not None and shape[1] != n:
                raise BundleError(
                    f"the model has {shape[1]} {what} but its bundle lists {n}", path=self.where
                )

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def _apply(self, fn: Any, recurse: bool = True) -> OnnxNet:
        """``.to(device)`` has no tensors to move: it reopens the session on that device's provider."""
        probe = fn(torch.empty(0))
        if isinstance(probe, torch.Tensor) and probe.device.type != self._device_type():
            self.session = self._session(probe.device)
        return self

    def _device_type(self) -> str:
        return "cuda" if CUDA_PROVIDER in self.providers else "cpu"

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        step = self.fixed_batch
        if step is None or step == batch.shape[0]:
            out = self._run(batch)
        else:
            parts = []
            for i in range(0, batch.shape[0], step):
                part = batch[i : i + step]
                n = part.shape[0]
                if n < step:
                    part = np.concatenate([part, np.zeros((step - n, *part.shape[1:]), part.dtype)])
                parts.append(self._run(part)[:n])
            out = np.concatenate(parts)
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)

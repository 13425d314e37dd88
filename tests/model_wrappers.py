"""Model wrappers tests share: they observe what the engine does to a model without changing it."""

from __future__ import annotations

import threading

import torch


class Counting(torch.nn.Module):
    """Counts the windows that pass through ``net`` (the window-count figure wraps the model so)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.windows = net, 0
        self._lock = threading.Lock()  # CPU lanes call forward from several threads at once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._lock:
            self.windows += x.shape[0]
        return self.net(x)

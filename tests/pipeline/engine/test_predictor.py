"""The predictor's CUDA options (pipeline/engine/predictor.py) leave the CPU path exactly as it was;
``cuda:N`` is a device the config accepts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.engine.predictor import Predictor
from pipeline.errors import ConfigError
from pipeline.job.config import load_config


def test_cuda_options_change_nothing_on_cpu():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    batch = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    plain = Predictor(net, device="cpu", activation="softmax")
    tuned = Predictor(net, device="cpu", activation="softmax", amp="bf16", channels_last=True, compile=True)
    assert not tuned.amp and not tuned.channels_last and tuned.model is plain.model
    np.testing.assert_array_equal(tuned(batch), plain(batch))
    assert Predictor(net, device="cpu", amp=True).amp  # an explicit bool still asks for CPU autocast


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:3"])
def test_config_accepts_devices(device):
    assert load_config(None, {"execution.device": device}).execution.device == device


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "mps"])
def test_config_refuses_other_devices(device):
    with pytest.raises(ConfigError):
        load_config(None, {"execution.device": device})

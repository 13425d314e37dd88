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


def test_cpu_predictor_has_no_streams_and_its_path_is_unchanged():
    """Streams are a CUDA path: on CPU the runner keeps its lanes, and results are bit-identical."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    batch = np.random.default_rng(1).normal(size=(3, 3, 16, 16)).astype(np.float32)
    predict = Predictor(net, device="cpu", activation="softmax", streams=4)
    assert predict.streams == 0
    with torch.inference_mode():
        expected = torch.softmax(net(torch.from_numpy(batch)), dim=1).numpy()
    np.testing.assert_array_equal(predict(batch), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/bench_cuda.py)")
def test_streams_in_flight_match_one_at_a_time_on_cuda():
    """Two batches in flight on their own streams give what one stream gives, batch for batch."""
    from pipeline import infer_array

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    image = np.random.default_rng(2).normal(size=(3, 300, 280)).astype(np.float32)
    one = Predictor(net, device="cuda", activation="softmax", amp=False, streams=1)
    two = Predictor(net, device="cuda", activation="softmax", amp=False, streams=2)
    assert (one.streams, two.streams) == (1, 2)
    a = infer_array(image, one, patch_size=64, batch_size=3)
    b = infer_array(image, two, patch_size=64, batch_size=3)
    np.testing.assert_array_equal(a, b)
    cpu = infer_array(image, Predictor(net, device="cpu", activation="softmax"), patch_size=64, batch_size=3)
    np.testing.assert_allclose(b, cpu, atol=1e-4)

"""The malloc tuning applies on glibc, can be declined, and stops repeated buffers from faulting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

# Allocates, touches and frees four 30 MB buffers at once (as a model's activations do), and prints
# the minor page faults of the last rounds (after warm-up).
PROBE = """
import resource, numpy as np
from pipeline.engine.allocator import tune_malloc
print(tune_malloc())
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for rnd in range(8):
    if rnd == 4:
        start = faults()
    bufs = [np.ones(7_500_000, dtype=np.float32) for _ in range(4)]
    del bufs
print(faults() - start)
"""


def _probe(env: dict[str, str]) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_tuned_malloc_reuses_freed_buffers_and_can_be_declined():
    applied, tuned_faults = _probe({"TILEWISE_MALLOC": ""})
    declined, default_faults = _probe({"TILEWISE_MALLOC": "default"})
    assert applied == "True" and declined == "False"
    # 120 MB freed at once each round: trimmed and faulted again by default, kept when tuned
    assert tuned_faults < 1000 < default_faults, (tuned_faults, default_faults)


# Frees 200 MB of heap buffers below a live one (so glibc's own top trim cannot return them) and prints
# the resident MB before and after two calls: one block's worth of bytes, then enough to be due.
TRIM_PROBE = """
import numpy as np
from pipeline.engine import allocator
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
allocator.tune_malloc()
bufs = [np.ones(2**18, dtype=np.float32) for _ in range(200)]  # 1 MB each: heap, not mmap
keep = np.ones(2**18, dtype=np.float32)
del bufs
before = rss_mb()
early = allocator.release_free_memory(allocator.TRIM_EVERY_BYTES // 2)
after_early = rss_mb()
due = allocator.release_free_memory(allocator.TRIM_EVERY_BYTES // 2)
print(early, due, round(before - after_early), round(before - rss_mb()))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_free_pages_go_back_once_enough_block_buffers_were_let_go():
    out = subprocess.run(
        [sys.executable, "-c", TRIM_PROBE], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    early, due, dropped_early, dropped = out[0], out[1], int(out[2]), int(out[3])
    assert (early, due) == ("False", "True")
    assert dropped_early < 20 and dropped > 150, (dropped_early, dropped)

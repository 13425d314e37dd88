"""Prefetch: the next block is read in the background only once at most one block is live, and a
single block is read inline, on the caller's thread."""

from __future__ import annotations

import threading

import numpy as np

from pipeline.core.tiling import BlockPlan
from pipeline.engine.prefetch import Prefetch
from pipeline.engine.runner import BlockInput


def _reader(log: list[tuple[tuple[int, ...], str]]):
    def read(block):
        log.append((block.index, threading.current_thread().name))
        return BlockInput(block, np.zeros((1, *block.read.shape), np.float32))

    return read


def test_a_single_block_is_read_inline_without_a_thread():
    plan = BlockPlan.build((64, 64), (32, 32), 0.25, (64, 64))
    log: list[tuple[tuple[int, ...], str]] = []
    got = [b.block.index for b in Prefetch(plan.blocks(), _reader(log))]
    assert got == [(0, 0)] and log == [((0, 0), threading.current_thread().name)]


def test_reads_ahead_in_order_and_never_more_than_one_block_beyond_the_live_one():
    plan = BlockPlan.build((256, 256), (32, 32), 0.25, (64, 64))
    order = [b.index for b in plan.blocks()]
    log: list[tuple[tuple[int, ...], str]] = []
    stream = Prefetch(plan.blocks(), _reader(log))
    seen = []
    for block_input in stream:
        seen.append(block_input.block.index)
        read_so_far = len(log)
        assert read_so_far <= len(seen) + 1  # the live block and at most one read ahead
        stream.retired()
    assert seen == order and [i for i, _ in log] == order
    assert all(name.startswith("tilewise-prefetch") for _, name in log)


def test_a_block_is_not_read_ahead_while_two_are_live():
    plan = BlockPlan.build((256, 64), (32, 32), 0.25, (64, 64))
    log: list[tuple[tuple[int, ...], str]] = []
    stream = iter(Prefetch(plan.blocks(), _reader(log)))
    first = next(stream)  # read, and the second block is read ahead (one live)
    second = next(stream)  # now two are live: nothing more may be read until one retires
    assert [first.block.index, second.block.index] == [(0, 0), (1, 0)]
    threading.Event().wait(0.2)  # time enough for a read-ahead thread to start one, if it were allowed
    assert [i for i, _ in log] == [(0, 0), (1, 0)]
    rest = list(stream)
    assert [b.block.index for b in rest] == [(2, 0), (3, 0)]

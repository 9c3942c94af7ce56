"""Reusable merge buffers: reuse, growth, the in-flight limit and shutdown of waiting threads."""

from __future__ import annotations

import threading

import pytest
import torch

from spear_mm.merging.buffers import BufferPool, PoolClosed, Workspace


def test_buffers_are_reused_and_typed():
    pool = BufferPool(limit=3)
    view, buf = pool.take(torch.float32, (4, 8))
    assert view.shape == (4, 8) and view.dtype == torch.float32 and buf.numel() == 128
    view.fill_(1.5)
    pool.give(buf)
    again, buf2 = pool.take(torch.bfloat16, (10,))
    assert buf2 is buf and again.dtype == torch.bfloat16  # the same memory, a different typed view
    scalar, buf3 = pool.take(torch.float16, ())
    assert scalar.shape == () and buf3 is not buf
    empty, _ = pool.take(torch.float32, (0, 64))
    assert empty.shape == (0, 64)


def test_smallest_fitting_buffer_and_growth_by_trading():
    pool = BufferPool(limit=2)
    _, small = pool.take(torch.uint8, (100,))
    _, big = pool.take(torch.uint8, (1000,))
    pool.give(small)
    pool.give(big)
    assert pool.take(torch.uint8, (50,))[1] is small
    pool.give(small)
    _, huge = pool.take(torch.uint8, (5000,))  # nothing fits and the limit is reached: a free buffer is traded
    assert huge.numel() == 5000 and huge is not big and huge is not small


def _watch_waits(pool: BufferPool) -> threading.Event:
    """An Event set when a `take` is about to block on the pool's condition (set under its lock, so no wake-up is lost)."""
    waiting = threading.Event()
    wait = pool._cond.wait

    def spy(timeout=None):
        waiting.set()
        return wait(timeout)

    pool._cond.wait = spy
    return waiting


def test_take_blocks_at_the_limit_and_close_wakes_waiters():
    pool = BufferPool(limit=1)
    _, buf = pool.take(torch.uint8, (10,))
    waiting = _watch_waits(pool)
    got = []

    def waiter():
        try:
            got.append(pool.take(torch.uint8, (10,))[1])
        except PoolClosed:
            got.append("closed")

    th = threading.Thread(target=waiter)
    th.start()
    assert waiting.wait(5)
    assert not got  # blocked while the only buffer is in flight
    pool.give(buf)
    th.join(5)
    assert got == [buf]
    waiting.clear()
    th = threading.Thread(target=waiter)
    th.start()
    assert waiting.wait(5)  # blocked again: the buffer it got was never given back
    pool.close()
    th.join(5)
    assert got[-1] == "closed" and not th.is_alive()
    with pytest.raises(PoolClosed):
        pool.take(torch.uint8, (1,))


def test_workspace_without_pools_hands_out_fresh_memory():
    ws = Workspace(torch.device("cpu"), work_numel=16)
    dst, held = ws.read_into(torch.float32, (3,))
    assert dst is None and held == []
    out, held = ws.output(torch.bfloat16, (2, 2))
    assert out.shape == (2, 2) and held == []
    x, y = ws.work(8)
    assert x.numel() == y.numel() == 8 and x.data_ptr() != y.data_ptr()
    x2, _ = ws.work(32)  # grows when a larger chunk comes
    assert x2.numel() == 32

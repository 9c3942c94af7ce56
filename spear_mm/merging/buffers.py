"""Reusable tensor memory for the streaming merge.

A fresh large CPU tensor is mapped by the allocator and faulted in page by page on first touch: converting
an 11.5 M-element bf16 tensor to float32 took 45 ms into fresh memory and 4 ms into a reused buffer
(measured on the 2-core CI VM). The merge therefore reads, computes and writes through a few buffers that
live for the whole run; `take` blocks while all of a pool's buffers are in flight, which also bounds the
memory of the read-ahead.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import torch


class PoolClosed(RuntimeError):
    """Raised in a thread waiting on a pool that was closed (the merge is being torn down)."""


class BufferPool:
    """At most `limit` byte buffers, allocated on demand and reused; `take` hands out a typed view.

    A request gets the smallest free buffer that fits; when none fits, a free one is dropped and a larger one
    allocated (tensor sizes repeat layer after layer, so this settles after the first layer).
    """

    def __init__(self, limit: int):
        self.limit = limit
        self._free: list[torch.Tensor] = []
        self._count = 0
        self._closed = False
        self._cond = threading.Condition()

    def take(self, dtype: torch.dtype, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """(typed view of `shape`, the buffer to `give` back); blocks while `limit` buffers are in use."""
        n = dtype.itemsize * math.prod(shape)
        with self._cond:
            while True:
                if self._closed:
                    raise PoolClosed("buffer pool closed")
                fits = [i for i, b in enumerate(self._free) if b.numel() >= n]  # indices: tensors have no ==
                if fits:
                    buf = self._free.pop(min(fits, key=lambda i: self._free[i].numel()))
                    break
                if self._free:  # nothing free is big enough: trade the largest free buffer for a bigger one
                    self._free.pop(max(range(len(self._free)), key=lambda i: self._free[i].numel()))
                    self._count -= 1
                if self._count < self.limit:
                    buf = torch.empty(max(n, 1), dtype=torch.uint8)
                    self._count += 1
                    break
                self._cond.wait()
        return buf[:n].view(dtype).view(shape), buf

    def give(self, buf: torch.Tensor) -> None:
        with self._cond:
            self._free.append(buf)
            self._cond.notify()

    def close(self) -> None:
        """Make every current and future `take` raise `PoolClosed`, so no thread waits forever."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


Held = list[tuple["BufferPool", torch.Tensor]]  # buffers a tensor in flight occupies, and their pools


@dataclass
class Workspace:
    """The memory one merge works in: pools for reads and outputs (None: fresh tensors the caller may keep)
    and two float32 work buffers on the compute device, sized for the largest single-pass chunk."""

    device: torch.device
    work_numel: int
    reads: BufferPool | None = None
    outs: BufferPool | None = None
    streamed: set[str] = field(default_factory=set)  # tensors merged/copied chunk by chunk, never whole
    methods: dict = field(default_factory=dict)  # method name -> MergeMethod built from the plan (streaming.py)
    _work: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def streams(self, task) -> bool:
        return task.name in self.streamed

    def work(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._work is None or self._work[0].numel() < n:
            size = max(n, self.work_numel)
            self._work = tuple(torch.empty(size, dtype=torch.float32, device=self.device) for _ in range(2))
        return self._work[0][:n], self._work[1][:n]

    def read_into(self, dtype: torch.dtype, shape: tuple[int, ...]) -> tuple[torch.Tensor | None, Held]:
        """A destination for one read (None: let the reader allocate) and the buffers it holds."""
        return self._take(self.reads, dtype, shape)

    def output(self, dtype: torch.dtype, shape: tuple[int, ...]) -> tuple[torch.Tensor, Held]:
        """Memory for one merged tensor (on the CPU, where the writer reads it)."""
        view, held = self._take(self.outs, dtype, shape)
        return (torch.empty(shape, dtype=dtype) if view is None else view), held

    @staticmethod
    def _take(pool: BufferPool | None, dtype: torch.dtype, shape: tuple[int, ...]) -> tuple[torch.Tensor | None, Held]:
        if pool is None:
            return None, []
        view, buf = pool.take(dtype, shape)
        return view, [(pool, buf)]

    @staticmethod
    def release(held: Held) -> None:
        for pool, buf in held:
            pool.give(buf)

    def close(self) -> None:
        for pool in (self.reads, self.outs):
            if pool is not None:
                pool.close()

"""Where independent work items run: in process (`local`), a process pool (`process`) or Ray tasks (`ray`).

One interface, `Executor.map(fn, items, labels=..., on_result=...)`: `fn` is a top-level (picklable) function,
each item a small picklable value — paths and names, never tensors, so workers read their data straight from
shared storage and the driver's memory stays bounded. Results come back in item order; `on_result(i, result)`
runs in the driver as each one arrives (callers write partial results there, so a restarted run resumes). A
failing item raises `SpearError` naming its label and the cause. A worker that dies (killed, out of memory)
is retried up to `max_retries` times (`process`: the pool is rebuilt; `ray`: Ray's own task retries).

Ray is optional (`pip install 'spear-mm[ray]'`) and imported only when a `ray` executor is made.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol, TypeVar

from spear_mm.errors import SpearError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
OnResult = Callable[[int, Any], None]
KINDS = ("local", "process", "ray")

__all__ = [
    "KINDS",
    "Executor",
    "LazyExecutor",
    "LocalExecutor",
    "ProcessExecutor",
    "RayExecutor",
    "keep_freed_memory",
    "make_executor",
]


class Executor(Protocol):
    """Runs `fn` over `items`; results in item order, `on_result(i, r)` in the driver as each arrives."""

    kind: str

    def map(
        self,
        fn: Callable[[T], R],
        items: Sequence[T],
        *,
        labels: Sequence[str] | None = None,
        on_result: Callable[[int, R], None] | None = None,
    ) -> list[R]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...


def _labels(items: Sequence[Any], labels: Sequence[str] | None) -> list[str]:
    if labels is None:
        return [f"item {i}" for i in range(len(items))]
    if len(labels) != len(items):
        raise SpearError(f"executor: {len(labels)} labels for {len(items)} items; give one label per item.")
    return [str(x) for x in labels]


def _failed(label: str, cause: BaseException | str) -> SpearError:
    return SpearError(f"work item '{label}' failed: {cause}")


class _Base:
    kind = "base"

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release workers (idempotent)."""


class LocalExecutor(_Base):
    """Runs items one after another in this process: no start-up cost, no pickling."""

    kind = "local"

    def map(self, fn, items, *, labels=None, on_result=None):
        names = _labels(items, labels)
        out = []
        for i, item in enumerate(items):
            try:
                result = fn(item)
            except Exception as exc:
                raise _failed(names[i], exc) from exc
            out.append(result)
            if on_result is not None:
                on_result(i, result)
        return out


def _init_process(threads: int, parent: int | None = None) -> None:
    """Each pool process gets an equal share of the cores as torch intra-op threads, and dies with its parent."""
    if parent is not None:
        die_with_parent(parent)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def keep_freed_memory() -> bool:
    """glibc only: serve large allocations from the heap and keep freed memory for reuse. By default glibc
    maps every block over ~32 MiB with its own `mmap` and unmaps it on `free`, so each training step pays
    page faults and page zeroing for its logits and gradients again (on the 2-core VM: 60% system time and 3x
    slower CPT, bench/cpt_bench.py). The process then keeps its peak memory until it exits, so this is for
    training and evaluation processes, not for the bounded-memory merge. Returns False where not applicable.
    `SPEAR_MM_MALLOC=default` leaves the allocator alone."""
    if os.environ.get("SPEAR_MM_MALLOC") == "default" or not hasattr(os, "confstr"):
        return False
    try:
        if "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or ""):
            return False
        import ctypes

        libc = ctypes.CDLL(None)
        m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
        return bool(
            libc.mallopt(m_mmap_max, 0)
            and libc.mallopt(m_trim_threshold, 2**31 - 1)
            and libc.mallopt(m_top_pad, 256 * 2**20)
        )
    except (OSError, ValueError, AttributeError):  # no confstr name, no libc symbol
        return False


def die_with_parent(parent: int) -> None:
    """Linux: the kernel sends SIGKILL to this process when its parent dies (even by kill -9), so no worker
    outlives a terminated run; elsewhere a no-op. Exits at once if the parent is already gone. (The kernel ties
    this to the thread that started the worker: pools are started from the driver's main thread here.)"""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(1)


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


class ProcessExecutor(_Base):
    """A bounded pool of spawned processes (at most 2 items in flight per worker); a dead worker is retried."""

    kind = "process"

    def __init__(self, workers: int | None = None, *, max_retries: int = 3) -> None:
        self.workers = max(1, workers or default_workers())
        self.max_retries = max_retries
        self.threads = max(1, (os.cpu_count() or 1) // self.workers)
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=mp.get_context("spawn"),
                initializer=_init_process,
                initargs=(self.threads, os.getpid()),
            )
        return self._pool

    def map(self, fn, items, *, labels=None, on_result=None):
        names = _labels(items, labels)
        results: dict[int, Any] = {}
        attempts = [0] * len(items)
        todo = list(range(len(items)))[::-1]  # a stack: pop() takes the next item in order
        pending: dict[Future, int] = {}
        while todo or pending:
            pool = self._get_pool()
            while todo and len(pending) < 2 * self.workers:
                i = todo.pop()
                attempts[i] += 1
                pending[pool.submit(fn, items[i])] = i
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            broken = []
            for fut in done:
                i = pending.pop(fut)
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    broken.append(i)
                    continue
                except Exception as exc:
                    for other in pending:  # stop what has not started; the pool stays usable
                        other.cancel()
                    raise _failed(names[i], exc) from exc
                results[i] = result
                if on_result is not None:
                    on_result(i, result)
            if broken:  # a worker died: every item still in the pool is lost; rebuild it and resubmit them
                lost = sorted(broken + list(pending.values()))
                pending.clear()
                self.close()
                for i in lost:
                    if attempts[i] > self.max_retries:
                        raise _failed(
                            names[i], f"its worker process died {attempts[i]} times (killed or out of memory)"
                        )
                log.warning(
                    "a worker process died; retrying %d item(s): %s", len(lost), ", ".join(names[i] for i in lost)
                )
                todo.extend(reversed(lost))
        return [results[i] for i in range(len(items))]

    def __exit__(self, exc_type, *exc: object) -> None:
        if exc_type is not None:  # interrupted or failed: stop the workers now instead of waiting for them
            self.terminate()
        self.close()

    def terminate(self) -> None:
        """Kill the worker processes and reap them, so no defunct child outlives this call (their items are lost;
        a re-run resumes from the journal)."""
        if self._pool is None:
            return
        procs = list((getattr(self._pool, "_processes", None) or {}).values())
        for proc in procs:
            if proc.is_alive():
                proc.kill()
        for proc in procs:
            proc.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on HOST:PORT that does not answer (ray.init would retry for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise SpearError(f"--ray-address {address!r}: give 'auto' or HOST:PORT of the head node (e.g. 10.0.0.1:6379).")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise SpearError(
            f"no Ray head node answers at {address} ({exc}). Start one there with `ray start --head --port {port}` "
            "(see docs/scaling.md), check the address and firewall, or drop --ray-address to run a local instance."
        ) from exc


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise SpearError(
            "the 'ray' executor needs Ray, which is not installed: pip install 'spear-mm[ray]' "
            "(or use --executor local | process)."
        ) from exc
    return ray


class RayExecutor(_Base):
    """Ray tasks on a cluster (`ray_address`: 'auto' or HOST:PORT) or on a local instance started here.

    Each task takes 1 CPU and `num_gpus` GPUs (default: 1 when the cluster has GPUs, else 0); a task whose
    worker dies is retried by Ray up to `max_retries` times; exceptions raised by `fn` are not retried.
    At most two tasks per slot are in flight, so the object store never holds more than that.
    """

    kind = "ray"

    def __init__(
        self,
        workers: int | None = None,
        *,
        ray_address: str | None = None,
        num_gpus: float | None = None,
        max_retries: int = 3,
    ) -> None:
        ray = _import_ray()
        self._ray = ray
        self._owned = False
        if not ray.is_initialized():
            try:
                if ray_address:
                    if ray_address != "auto":
                        _check_reachable(ray_address)
                    ray.init(address=ray_address)
                else:
                    ray.init(num_cpus=workers or default_workers(), include_dashboard=False)
                    self._owned = True
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise SpearError(
                    f"could not connect to a Ray cluster at {ray_address!r}: {exc}. Start one with "
                    "`ray start --head` (see docs/scaling.md) or drop --ray-address to run a local instance."
                ) from exc
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        self.num_gpus = float(num_gpus) if num_gpus is not None else (1.0 if gpus > 0 else 0.0)
        if self.num_gpus > 0 and gpus == 0:
            raise SpearError(f"num_gpus={self.num_gpus} per task, but the Ray cluster has no GPUs; use num_gpus=0.")
        slots = int(resources.get("CPU", 1))
        if self.num_gpus > 0:
            slots = min(slots, int(gpus / self.num_gpus))
        self.workers = max(1, min(workers, slots) if workers else slots)
        self.max_retries = max_retries
        self._remote: dict[Callable, Any] = {}

    def _task(self, fn: Callable):
        if fn not in self._remote:
            self._remote[fn] = self._ray.remote(
                num_cpus=1, num_gpus=self.num_gpus, max_retries=self.max_retries, retry_exceptions=False
            )(fn)
        return self._remote[fn]

    def map(self, fn, items, *, labels=None, on_result=None):
        ray = self._ray
        names = _labels(items, labels)
        task = self._task(fn)
        results: dict[int, Any] = {}
        queue = iter(range(len(items)))
        pending: dict[Any, int] = {}

        def submit() -> None:
            i = next(queue, None)
            if i is not None:
                pending[task.remote(items[i])] = i

        for _ in range(2 * self.workers):
            submit()
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    i = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        raise _failed(names[i], getattr(exc, "cause", None) or exc) from exc
                    except ray.exceptions.RayError as exc:  # worker died more than max_retries times, …
                        raise _failed(names[i], f"{type(exc).__name__}: {exc}") from exc
                    results[i] = result
                    if on_result is not None:
                        on_result(i, result)
                    submit()
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
        return [results[i] for i in range(len(items))]

    def close(self) -> None:
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()
        self._owned = False


def make_executor(
    kind: str = "local",
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    num_gpus: float | None = None,
    max_retries: int = 3,
) -> Executor:
    """An executor by name: local | process | ray (see the module docstring)."""
    if kind == "local":
        return LocalExecutor()
    if kind == "process":
        return ProcessExecutor(workers, max_retries=max_retries)
    if kind == "ray":
        return RayExecutor(workers, ray_address=ray_address, num_gpus=num_gpus, max_retries=max_retries)
    raise SpearError(f"unknown executor {kind!r}: use one of {', '.join(KINDS)}.")


class LazyExecutor:
    """The run's executor, made on first use (a resumed run with nothing left to do starts none) and kept for the
    whole run, so a Ray instance started for scoring is reused by the evaluations."""

    def __init__(self, kind: str, workers: int | None, ray_address: str | None, num_gpus: int | None):
        self.kind, self.workers, self.ray_address, self.num_gpus = kind, workers, ray_address, num_gpus
        self._ex = None

    def get(self):
        if self._ex is None:
            self._ex = make_executor(
                self.kind, workers=self.workers, ray_address=self.ray_address, num_gpus=self.num_gpus
            )
        return self._ex

    def __enter__(self) -> LazyExecutor:
        return self

    def __exit__(self, *exc) -> None:
        if self._ex is not None:
            self._ex.__exit__(*exc)  # on an exception a process pool kills its workers instead of waiting

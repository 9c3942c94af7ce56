"""The per-tensor merge loop behind `spear-mm merge`: read ahead, merge in float32, hand tensors to a writer.

One thread reads the next ops into pooled buffers while the caller merges; tensors above `STREAM_ABOVE`
elements never exist whole (their chunks go from the input files through the work buffers to the writer).
The kernels' math is in kernels.py; this module is about moving bytes with bounded memory.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from pydantic import BaseModel

from spear_mm.io.architecture import ParamInfo
from spear_mm.io.checkpoint import Checkpoint, require_finite
from spear_mm.io.pair import Pair
from spear_mm.merging.buffers import BufferPool, Held, Workspace
from spear_mm.merging.kernels import CHUNK, ZERO_STATS, PairStats, pair_stats
from spear_mm.merging.methods import METHODS, MergeMethod
from spear_mm.planning.plan import Plan

Sink = Callable[[str, int, torch.Tensor], None]  # (tensor name, first element, chunk): write part of a tensor
STREAM_ABOVE = 2 * CHUNK  # elements: larger tensors are streamed in chunks from input to output files
PREFETCH = 2  # ops read ahead of the one being merged
READ_BUFFERS = 6  # pooled input buffers: the op being merged, reads ahead, kept tensors waiting to be written
OUT_BUFFERS = 3  # pooled output buffers: one being computed, two being written


@dataclass(frozen=True)
class TensorOp:
    """What the merge does to one tensor."""

    param: ParamInfo
    action: str  # keep | base | merge
    t: float
    out_dtype: torch.dtype
    shape: tuple[int, ...]
    shared_rows: int | None = None  # vocabulary extension: rows [0, shared_rows) merged, the rest kept
    method: str = "slerp"  # the plan's method for this tensor (Plan.method_for)

    @property
    def name(self) -> str:
        return self.param.name


class TensorStat(BaseModel):
    """What the merge did to one tensor (one row of merge_report.json)."""

    name: str
    group: str
    layer: int | None
    module: str
    action: str
    t: float
    cos: float | None = None
    rel_change: float | None = None
    lerp_fallback: bool = False


def _step(op: TensorOp, method: MergeMethod) -> int:
    """Elements per pass: the whole tensor up to 2 chunks (or for a method that is not streamable), else CHUNK."""
    n = math.prod(op.shape) if op.shared_rows is None else op.shared_rows * math.prod(op.shape[1:])
    return max(n, 1) if n <= 2 * CHUNK or not method.streamable else CHUNK


def _load(pair: Pair, op: TensorOp, ws: Workspace) -> tuple[torch.Tensor | None, torch.Tensor | None, Held]:
    """Read what the op needs (adapted, base or both) into workspace buffers (streamed ops: nothing)."""
    held: Held = []
    if ws.streams(op):
        return None, None, held

    def read(ckpt: Checkpoint) -> torch.Tensor:
        info = ckpt.infos[op.name]
        dst, h = ws.read_into(info.dtype, info.shape)
        held.extend(h)
        return ckpt.read(op.name, out=dst)

    try:
        a = read(pair.adapted) if op.action != "base" else None
        b = read(pair.base) if op.action != "keep" else None
    except BaseException:
        ws.release(held)
        raise
    return a, b, held


def _check_finite(x: torch.Tensor, op: TensorOp, ckpt: Checkpoint) -> None:
    require_finite(x, op.name, ckpt.infos[op.name].file, "merging")


def _merge_one(
    plan: Plan, op: TensorOp, a: torch.Tensor, b: torch.Tensor, ws: Workspace
) -> tuple[torch.Tensor, PairStats, bool, Held]:
    """Merge one pair in float32 on the workspace device; returns (output, pair statistics, LERP fallback, held).

    SLERP needs the pair's angle before combining, so tensors above 2 chunks take two passes over chunks
    (statistics, then combination); smaller ones are converted once and kept in the work buffers.
    """
    shared = b.numel()  # < a.numel() only with a vocabulary extension: the extra rows are kept from `a`
    af, bf = a.reshape(-1), b.reshape(-1)
    out, held = ws.output(op.out_dtype, op.shape)
    of = out.view(-1)
    if shared < a.numel():
        of[shared:].copy_(af[shared:])
    method = method_for(ws, op)
    step = _step(op, method)
    xw, yw = ws.work(min(step, shared))

    def chunk(s: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = min(step, shared - s)
        return xw[:n].copy_(af[s : s + n]), yw[:n].copy_(bf[s : s + n])

    stats = ZERO_STATS
    for s in range(0, shared, step):
        stats = stats + pair_stats(*chunk(s))
    ca, cb, fallback = method.coefficients(stats, op.t)
    for s in range(0, shared, step):
        x, y = (xw, yw) if step >= shared else chunk(s)  # one pass: the work buffers still hold the pair
        res = method.combine_(x, y, op.t, ca, cb)
        of[s : s + res.numel()].copy_(res)
    return out, stats, fallback, held


def _stream_chunks(pair: Pair, plan: Plan, op: TensorOp, ws: Workspace, sink: Sink) -> TensorStat:
    """Copy or merge one large tensor chunk by chunk (read range → float32 → combine → write range).

    Two passes over the inputs for a merge (the angle needs the whole pair first); memory is a few chunks
    whatever the tensor's size (a 128k-vocabulary embedding of a 70B model is 2 GB in bf16).
    """
    name, n = op.name, math.prod(op.shape)
    shared = n if op.shared_rows is None else op.shared_rows * math.prod(op.shape[1:])
    a_info, b_info = pair.adapted.infos[name], pair.base.infos[name]
    sa, ha = ws.read_into(a_info.dtype, (CHUNK,))
    sb, hb = ws.read_into(b_info.dtype, (CHUNK,))
    so, ho = ws.output(op.out_dtype, (CHUNK,))
    try:
        if op.action != "merge":
            ckpt = pair.adapted if op.action == "keep" else pair.base
            for s in range(0, n, CHUNK):
                k = min(CHUNK, n - s)
                x = ckpt.read_range(name, s, k, sa[:k])
                _check_finite(x, op, ckpt)
                sink(name, s, x)
            return _stat(op)
        xw, yw = ws.work(CHUNK)

        def load(s: int) -> tuple[torch.Tensor, torch.Tensor]:
            k = min(CHUNK, shared - s)
            x, y = pair.adapted.read_range(name, s, k, sa[:k]), pair.base.read_range(name, s, k, sb[:k])
            return xw[:k].copy_(x), yw[:k].copy_(y)

        stats = ZERO_STATS
        for s in range(0, shared, CHUNK):
            part = pair_stats(*load(s))
            if not part.finite:
                _check_finite(sa[: min(CHUNK, shared - s)], op, pair.adapted)
                _check_finite(sb[: min(CHUNK, shared - s)], op, pair.base)
            stats = stats + part
        method = method_for(ws, op)
        ca, cb, fallback = method.coefficients(stats, op.t)
        for s in range(0, shared, CHUNK):
            x, y = load(s)
            res = method.combine_(x, y, op.t, ca, cb)
            sink(name, s, so[: res.numel()].copy_(res))
        for s in range(shared, n, CHUNK):  # vocabulary extension: the new rows are the adapted model's
            k = min(CHUNK, n - s)
            sink(name, s, so[:k].copy_(pair.adapted.read_range(name, s, k, sa[:k])))
        return _stat(op, stats, fallback)
    finally:
        ws.release(ha + hb + ho)


def methods_of(plan: Plan, pair: Pair) -> dict[str, MergeMethod]:
    """Every method the plan uses, built with the plan's options; a data-aware one opens its statistics, which
    must have been collected on this pair."""
    methods = {m: METHODS[m].from_plan(plan) for m in sorted(plan.methods())}
    for m in methods.values():
        stats = getattr(m, "statistics", None)
        if stats is not None:
            stats.check_pair(pair.base.fingerprint(), pair.adapted.fingerprint())
    return methods


def method_for(ws: Workspace, op: TensorOp) -> MergeMethod:
    """The method that merges one tensor, bound to it."""
    return ws.methods[op.method].bind(op.name, op.shape)


def _stat(op: TensorOp, stats: PairStats | None = None, fallback: bool = False) -> TensorStat:
    p = op.param
    extra = {} if stats is None else {"cos": stats.cos, "rel_change": stats.rel_change, "lerp_fallback": fallback}
    return TensorStat(name=p.name, group=p.group, layer=p.layer, module=p.module, action=op.action, t=op.t, **extra)


def workspace_for(pair: Pair, plan: Plan, ops: list[TensorOp], device: torch.device, pooled: bool) -> Workspace:
    merged = [t for t in ops if t.action == "merge"]
    methods = methods_of(plan, pair)
    method = {t.name: methods[t.method].bind(t.name, t.shape) for t in ops}
    small = [t for t in merged if not pooled or math.prod(t.shape) <= STREAM_ABOVE or not method[t.name].streamable]
    work = max((min(_step(t, method[t.name]), math.prod(pair.base.infos[t.name].shape)) for t in small), default=0)
    if not pooled:
        return Workspace(device, work, methods=methods)
    streamed = {t.name for t in ops if math.prod(t.shape) > STREAM_ABOVE and method[t.name].streamable}
    work = max([work, *(CHUNK for t in merged if t.name in streamed)])
    pools = BufferPool(READ_BUFFERS), BufferPool(OUT_BUFFERS)
    return Workspace(device, work, *pools, streamed=streamed, methods=methods)


def produce(
    pair: Pair, plan: Plan, ops: list[TensorOp], ws: Workspace, prefetch: int, sink: Sink | None = None
) -> Iterator[tuple[TensorOp, torch.Tensor | None, TensorStat, Held]]:
    """The merge loop: one thread reads `prefetch` ops ahead while this one merges. The consumer gives each
    tensor's `held` buffers back to the workspace once it is done with it. With a `sink`, tensors above
    `STREAM_ABOVE` elements never exist whole: their chunks go straight to the sink and None is yielded."""
    with ThreadPoolExecutor(1, thread_name_prefix="spear-read") as pool:
        pending: deque[Future] = deque(pool.submit(_load, pair, t, ws) for t in ops[:prefetch])
        try:
            for i, op in enumerate(ops):
                a, b, held = pending.popleft().result()
                if i + prefetch < len(ops):
                    pending.append(pool.submit(_load, pair, ops[i + prefetch], ws))
                if ws.streams(op):
                    yield op, None, _stream_chunks(pair, plan, op, ws, sink), held
                    continue
                if op.action != "merge":
                    x = a if a is not None else b
                    _check_finite(x, op, pair.adapted if a is not None else pair.base)
                    yield op, x, _stat(op), held
                    continue
                try:
                    out, stats, fallback, out_held = _merge_one(plan, op, a, b, ws)
                    if not stats.finite:
                        _check_finite(a, op, pair.adapted)
                        _check_finite(b, op, pair.base)
                finally:
                    ws.release(held)
                yield op, out, _stat(op, stats, fallback), out_held
        finally:
            ws.close()  # a read waiting for a buffer gives up, so the pool can shut down
            for fut in pending:
                fut.cancel()

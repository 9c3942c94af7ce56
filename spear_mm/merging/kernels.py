"""The numerics every merge method shares: a pair's inner products in float64 (`PairStats`), and `ca·a + cb·b`.

Both SLERP and LERP reduce to `ca·a + cb·b` once the global statistics of the pair are known, so the streaming
merge computes `PairStats` first and then applies the coefficients chunk by chunk. The methods themselves are
in spear_mm.merging.methods; spear_mm.merging.functional has them as whole-tensor functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LERP_THRESHOLD = 0.9995  # |cos| above this: SLERP is numerically LERP (mergekit's DOT_THRESHOLD)
CHUNK = 1 << 23  # elements per float32 work chunk in streaming kernels (32 MiB)
STATS_BLOCK = 1 << 18  # elements per float32 dot product in `pair_stats` (then summed in float64)


@dataclass(frozen=True)
class PairStats:
    """Inner products of a flattened pair, accumulated in float64 (`dd` = ‖a − b‖², measured directly)."""

    dot: float
    aa: float
    bb: float
    dd: float = 0.0

    @property
    def finite(self) -> bool:
        return all(math.isfinite(x) for x in (self.dot, self.aa, self.bb, self.dd))

    @property
    def cos(self) -> float:
        den = math.sqrt(self.aa) * math.sqrt(self.bb)
        return max(-1.0, min(1.0, self.dot / den)) if den > 0 else 1.0

    @property
    def rel_change(self) -> float:
        """‖a − b‖ / ‖b‖ (from ‖a − b‖² itself: aa + bb − 2·dot cancels catastrophically for small changes)."""
        if self.bb <= 0:
            return 0.0 if self.aa <= 0 else math.inf
        return math.sqrt(self.dd / self.bb)

    def __add__(self, other: PairStats) -> PairStats:
        return PairStats(self.dot + other.dot, self.aa + other.aa, self.bb + other.bb, self.dd + other.dd)


ZERO_STATS = PairStats(0.0, 0.0, 0.0, 0.0)


def pair_stats(a32: torch.Tensor, b32: torch.Tensor) -> PairStats:
    """Inner products of two float32 tensors (any shape), accurate to ~1e-7 relative.

    One float32 `torch.dot` over millions of elements loses ~3e-4 relative (measured), enough to blur the
    LERP threshold and the reported change; blocks of `STATS_BLOCK` elements summed in float64 do not.
    """
    a, b = a32.reshape(-1), b32.reshape(-1)
    if a.device.type != "cpu":  # one reduction on the device, one sync
        return _device_stats(a, b)
    dot = aa = bb = dd = 0.0
    scratch = torch.empty(min(STATS_BLOCK, a.numel()), dtype=a.dtype)
    for s in range(0, a.numel(), STATS_BLOCK):
        x, y = a[s : s + STATS_BLOCK], b[s : s + STATS_BLOCK]
        d = torch.sub(x, y, out=scratch[: x.numel()])
        dot += float(torch.dot(x, y))
        aa += float(torch.dot(x, x))
        bb += float(torch.dot(y, y))
        dd += float(torch.dot(d, d))
    return PairStats(dot, aa, bb, dd)


def _device_stats(a: torch.Tensor, b: torch.Tensor) -> PairStats:
    a, b = a.double(), b.double()
    dot, aa, bb, dd = torch.stack([a @ b, a @ a, b @ b, (a - b).square().sum()]).tolist()
    return PairStats(dot, aa, bb, dd)


def combine(a: torch.Tensor, b: torch.Tensor, ca: float, cb: float, out_dtype: torch.dtype) -> torch.Tensor:
    """ca·a + cb·b computed in float32, returned in out_dtype (same shape as a)."""
    out = a.to(torch.float32, copy=True)
    out.mul_(ca).add_(b.to(torch.float32), alpha=cb)
    return out.to(out_dtype)

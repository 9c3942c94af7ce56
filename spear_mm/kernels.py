"""Merge kernels on one tensor pair. `a` is the adapted tensor, `b` the base; t is the weight of the base.

SLERP follows mergekit's formulation: the angle comes from normalised flattened copies, the interpolation
is applied to the unnormalised tensors, and LERP is used when |cos| > 0.9995 (nearly parallel or antipodal)
or either tensor is zero. Every kernel computes in float32 and returns `out_dtype` (default: a's dtype);
t = 0 returns `a` and t = 1 returns `b` bit for bit.

Both SLERP and LERP reduce to `ca·a + cb·b` once the global statistics of the pair are known, so the
streaming executor computes `PairStats` first and then applies the coefficients chunk by chunk.
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


def slerp_coefficients(stats: PairStats, t: float) -> tuple[float, float, bool]:
    """(ca, cb, lerp_fallback) such that slerp(a, b, t) = ca·a + cb·b."""
    if t <= 0.0:
        return 1.0, 0.0, False
    if t >= 1.0:
        return 0.0, 1.0, False
    if stats.aa <= 0 or stats.bb <= 0 or abs(stats.cos) > LERP_THRESHOLD:
        return 1.0 - t, t, True
    theta = math.acos(stats.cos)
    s = math.sin(theta)
    return math.sin((1.0 - t) * theta) / s, math.sin(t * theta) / s, False


def combine(a: torch.Tensor, b: torch.Tensor, ca: float, cb: float, out_dtype: torch.dtype) -> torch.Tensor:
    """ca·a + cb·b computed in float32, returned in out_dtype (same shape as a)."""
    out = a.to(torch.float32, copy=True)
    out.mul_(ca).add_(b.to(torch.float32), alpha=cb)
    return out.to(out_dtype)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Spherical interpolation from a (t = 0) to b (t = 1)."""
    out_dtype = out_dtype or a.dtype
    if t <= 0.0:
        return a.to(out_dtype)
    if t >= 1.0:
        return b.to(out_dtype)
    ca, cb, _ = slerp_coefficients(pair_stats(a.float(), b.float()), t)
    return combine(a, b, ca, cb, out_dtype)


def lerp(a: torch.Tensor, b: torch.Tensor, t: float, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Linear interpolation (1 − t)·a + t·b."""
    out_dtype = out_dtype or a.dtype
    if t <= 0.0:
        return a.to(out_dtype)
    if t >= 1.0:
        return b.to(out_dtype)
    return combine(a, b, 1.0 - t, t, out_dtype)


def task_arithmetic(a: torch.Tensor, b: torch.Tensor, t: float, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """b + λ·(a − b) with λ = 1 − t: the task vector scaled by λ (for one task this equals LERP)."""
    return lerp(a, b, t, out_dtype)


def trim_threshold(delta32: torch.Tensor, density: float) -> float:
    """|Δ| value above which the top `density` fraction of entries lies (TIES trimming)."""
    flat = delta32.reshape(-1).abs()
    keep = max(1, round(density * flat.numel()))
    if keep >= flat.numel():
        return 0.0
    return float(torch.kthvalue(flat, flat.numel() - keep + 1).values)


def ties(
    a: torch.Tensor, b: torch.Tensor, t: float, density: float = 0.2, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """TIES-style trimmed delta: b + (1 − t)·Δ where only the top-`density` |Δ| entries are kept."""
    out_dtype = out_dtype or a.dtype
    if t >= 1.0:
        return b.to(out_dtype)
    b32 = b.to(torch.float32, copy=True)  # never modify the caller's tensor
    delta = a.to(torch.float32) - b32
    if density < 1.0:
        delta.masked_fill_(delta.abs() < trim_threshold(delta, density), 0.0)
    return b32.add_(delta, alpha=1.0 - t).to(out_dtype)


KERNELS = {"slerp": slerp, "lerp": lerp, "task_arithmetic": task_arithmetic, "ties": ties}

"""Inner products of a tensor pair accumulated in float64 (`PairStats`): shared by scoring (‖W_B‖, ‖ΔW‖, rc,
cos) and merging (SLERP's angle, the LERP threshold), so both report the same numbers for the same pair."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

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
    """Inner products of two tensors (any shape; blocks of other float dtypes are cast to float32 one at a time,
    so a bf16 embedding never exists whole in float32), accurate to ~1e-7 relative.

    One float32 `torch.dot` over millions of elements loses ~3e-4 relative (measured), enough to blur the
    LERP threshold and the reported change; blocks of `STATS_BLOCK` elements summed in float64 do not.
    """
    a, b = a32.reshape(-1), b32.reshape(-1)
    if a.device.type != "cpu":  # one reduction on the device, one sync
        return _device_stats(a, b)
    dot = aa = bb = dd = 0.0
    scratch = torch.empty(min(STATS_BLOCK, a.numel()), dtype=torch.float32)
    for s in range(0, a.numel(), STATS_BLOCK):
        x, y = a[s : s + STATS_BLOCK].to(torch.float32), b[s : s + STATS_BLOCK].to(torch.float32)
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

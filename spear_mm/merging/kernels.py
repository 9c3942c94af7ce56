"""The numerics every merge method shares: a pair's inner products in float64 (`PairStats`, from
spear_mm.pair_stats), and `ca·a + cb·b`.

Both SLERP and LERP reduce to `ca·a + cb·b` once the global statistics of the pair are known, so the streaming
merge computes `PairStats` first and then applies the coefficients chunk by chunk. The methods themselves are
in spear_mm.merging.methods; spear_mm.merging.functional has them as whole-tensor functions.
"""

from __future__ import annotations

import torch

from spear_mm.pair_stats import ZERO_STATS, PairStats, pair_stats

__all__ = ["CHUNK", "LERP_THRESHOLD", "ZERO_STATS", "PairStats", "combine", "pair_stats"]

LERP_THRESHOLD = 0.9995  # |cos| above this: SLERP is numerically LERP (mergekit's DOT_THRESHOLD)
CHUNK = 1 << 23  # elements per float32 work chunk in streaming kernels (32 MiB)


def combine(a: torch.Tensor, b: torch.Tensor, ca: float, cb: float, out_dtype: torch.dtype) -> torch.Tensor:
    """ca·a + cb·b computed in float32, returned in out_dtype (same shape as a)."""
    out = a.to(torch.float32, copy=True)
    out.mul_(ca).add_(b.to(torch.float32), alpha=cb)
    return out.to(out_dtype)

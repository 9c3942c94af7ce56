"""The merge methods as whole-tensor functions, for the Python API and as the reference the tests compare with.

`a` is the adapted tensor, `b` the base; t is the weight of the base. Each computes in float32 and returns
`out_dtype` (default: a's dtype); t = 1 returns `b` bit for bit, and t = 0 returns `a` (TIES still trims).
"""

from __future__ import annotations

import torch

from spear_mm.merging.kernels import PairStats
from spear_mm.merging.methods import get_method
from spear_mm.merging.methods.ties import trim_threshold

__all__ = ["KERNELS", "lerp", "slerp", "slerp_coefficients", "task_arithmetic", "ties", "trim_threshold"]


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Spherical interpolation from a (t = 0) to b (t = 1)."""
    return get_method("slerp").merge(a, b, t, out_dtype)


def lerp(a: torch.Tensor, b: torch.Tensor, t: float, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Linear interpolation (1 − t)·a + t·b."""
    return get_method("lerp").merge(a, b, t, out_dtype)


def task_arithmetic(a: torch.Tensor, b: torch.Tensor, t: float, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """b + λ·(a − b) with λ = 1 − t: the task vector scaled by λ (for one task this equals LERP)."""
    return get_method("task_arithmetic").merge(a, b, t, out_dtype)


def ties(
    a: torch.Tensor, b: torch.Tensor, t: float, density: float = 0.2, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """TIES-style trimmed delta: b + (1 − t)·Δ where only the top-`density` |Δ| entries are kept."""
    return get_method("ties", density=density).merge(a, b, t, out_dtype)


def slerp_coefficients(stats: PairStats, t: float) -> tuple[float, float, bool]:
    """(ca, cb, lerp_fallback) such that slerp(a, b, t) = ca·a + cb·b."""
    return get_method("slerp").coefficients(stats, t)


KERNELS = {"slerp": slerp, "lerp": lerp, "task_arithmetic": task_arithmetic, "ties": ties}

"""TIES-style trimmed delta: b + (1 − t)·Δ, keeping only the top-`density` fraction of |Δ| entries."""

from __future__ import annotations

import torch

from spear_mm.merging.methods.base import MergeMethod, register
from spear_mm.planning.plan import Plan


def trim_threshold(delta32: torch.Tensor, density: float) -> float:
    """|Δ| value above which the top `density` fraction of entries lies."""
    flat = delta32.reshape(-1).abs()
    keep = max(1, round(density * flat.numel()))
    if keep >= flat.numel():
        return 0.0
    return float(torch.kthvalue(flat, flat.numel() - keep + 1).values)


@register
class Ties(MergeMethod):
    name = "ties"
    summary = "Δ trimmed to its largest `density` share of entries, added back with weight 1 - t"
    options = ("density",)
    streamable = False  # the trim threshold is a quantile of the whole tensor's |Δ|
    keeps_adapted_at_zero = False  # t = 0 still trims Δ

    def __init__(self, density: float = 0.2):
        self.density = density

    @classmethod
    def changes_at_zero(cls, plan: Plan) -> bool:
        return plan.density < 1  # density 1 keeps Δ whole: t = 0 is the adapted tensor

    def combine_(self, x: torch.Tensor, y: torch.Tensor, t: float, ca: float, cb: float) -> torch.Tensor:
        x.sub_(y)  # Δ, trimmed to its largest entries, added back with weight 1 − t
        if self.density < 1.0:
            x.masked_fill_(x.abs() < trim_threshold(x, self.density), 0.0)
        return y.add_(x, alpha=1.0 - t)

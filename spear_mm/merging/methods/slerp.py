"""SLERP, as mergekit computes it: the angle from normalised flattened copies, applied to the unnormalised
tensors, with LERP when |cos| > 0.9995 (nearly parallel or antipodal) or either tensor is zero."""

from __future__ import annotations

import math
from typing import Any

from spear_mm.merging.kernels import LERP_THRESHOLD, PairStats
from spear_mm.merging.methods.base import MergeMethod, register


@register
class Slerp(MergeMethod):
    name = "slerp"
    summary = "spherical interpolation per tensor toward the base (LERP when |cos| > 0.9995); the default"
    mergekit = "slerp"

    @classmethod
    def mergekit_slice(cls, sources: list[dict], rules: list[dict]) -> dict:
        """mergekit's SLERP `t` weighs the source that is not `base_model` (the adapted): spear-mm's t."""
        return {"sources": sources, "parameters": {"t": rules}}

    @classmethod
    def mergekit_parameters(cls, fixed: list[dict], other: float) -> dict[str, Any]:
        return {"t": [*fixed, {"value": round(other, 6)}]}

    def coefficients(self, stats: PairStats, t: float) -> tuple[float, float, bool]:
        if t <= 0.0:
            return 1.0, 0.0, False
        if t >= 1.0:
            return 0.0, 1.0, False
        if stats.aa <= 0 or stats.bb <= 0 or abs(stats.cos) > LERP_THRESHOLD:
            return 1.0 - t, t, True
        theta = math.acos(stats.cos)
        s = math.sin(theta)
        return math.sin((1.0 - t) * theta) / s, math.sin(t * theta) / s, False

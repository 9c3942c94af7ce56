"""SLERP, as mergekit computes it: the angle from normalised flattened copies, applied to the unnormalised
tensors, with LERP when |cos| > 0.9995 (nearly parallel or antipodal) or either tensor is zero."""

from __future__ import annotations

import math

from spear_mm.merging.kernels import LERP_THRESHOLD, PairStats
from spear_mm.merging.methods.base import MergeMethod, register


@register
class Slerp(MergeMethod):
    name = "slerp"

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

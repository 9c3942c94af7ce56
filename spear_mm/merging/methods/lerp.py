"""Linear interpolation, and task arithmetic (b + λ·(a − b) with λ = 1 − t: for one task, the same numbers)."""

from __future__ import annotations

from spear_mm.merging.methods.base import MergeMethod, register


@register
class Lerp(MergeMethod):
    name = "lerp"


@register
class TaskArithmetic(MergeMethod):
    name = "task_arithmetic"

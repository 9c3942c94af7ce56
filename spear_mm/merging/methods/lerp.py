"""Linear interpolation, and task arithmetic (b + λ·(a − b) with λ = 1 − t: for one task, the same numbers)."""

from __future__ import annotations

from spear_mm.merging.methods.base import MergeMethod, register


@register
class Lerp(MergeMethod):
    name = "lerp"
    summary = "linear interpolation (1 - t)·adapted + t·base"
    mergekit = "linear"  # weights 1 − t and t per rule


@register
class TaskArithmetic(MergeMethod):
    name = "task_arithmetic"
    summary = "base + (1 - t)·Δ, with Δ = adapted - base"

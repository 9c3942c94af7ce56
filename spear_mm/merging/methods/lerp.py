"""Linear interpolation, and task arithmetic (b + λ·(a − b) with λ = 1 − t: for one task, the same numbers)."""

from __future__ import annotations

from typing import Any

from spear_mm.merging.methods.base import MergeMethod, register


@register
class Lerp(MergeMethod):
    name = "lerp"
    summary = "linear interpolation (1 - t)·adapted + t·base"
    mergekit = "linear"

    @classmethod
    def mergekit_slice(cls, sources: list[dict], rules: list[dict]) -> dict:
        """mergekit's linear merge: the adapted weighs 1 − t, the base t (normalised)."""
        sources[0]["parameters"] = {"weight": [dict(r, value=_one_minus(r["value"])) for r in rules]}
        sources[1]["parameters"] = {"weight": rules}
        return {"sources": sources}

    @classmethod
    def mergekit_parameters(cls, fixed: list[dict], other: float) -> dict[str, Any]:
        return {"normalize": True}


@register
class TaskArithmetic(MergeMethod):
    name = "task_arithmetic"
    summary = "base + (1 - t)·Δ, with Δ = adapted - base"


def _one_minus(v: float | list[float]) -> float | list[float]:
    return [round(1 - x, 6) for x in v] if isinstance(v, list) else round(1 - v, 6)

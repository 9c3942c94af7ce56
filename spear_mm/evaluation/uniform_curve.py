"""The bar every plan must clear: the uniform-SLERP curve (R and K of `uniform-t<t>` for t on a grid).

A SPEAR-MM plan is worth having only where it lies above that curve: more general retention R at the same
domain gain kept K. For each plan: ΔR at equal K = R(plan) − R_curve(K(plan)), with R_curve interpolated
linearly along the curve in t order (adapted = t 0 and base = t 1 close it; where the curve passes a K more
than once, the highest R counts), and paired tests on every task against the nearest uniform point in K.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, Field

from spear_mm.evaluation.metrics import EvalResult, compare

UNIFORM_GRID = tuple(round(0.1 * i, 1) for i in range(1, 10))
_NAME = re.compile(r"^uniform-t([0-9.]+)$")


@dataclass(frozen=True)
class CurvePoint:
    t: float
    name: str
    retention: float
    gain_kept: float


def uniform_t(name: str) -> float | None:
    """t of a uniform baseline's name (`uniform-t0.3` → 0.3), None for other names."""
    m = _NAME.match(name)
    return float(m.group(1)) if m else None


def curve_from(points: Mapping[str, tuple[float | None, float | None]]) -> list[CurvePoint]:
    """The curve in t order: adapted (t 0), every `uniform-t*` point with R and K, base (t 1)."""
    out = []
    for name, (r, k) in points.items():
        t = 0.0 if name == "adapted" else 1.0 if name == "base" else uniform_t(name)
        if t is not None and r is not None and k is not None:
            out.append(CurvePoint(t, name, r, k))
    return sorted(out, key=lambda p: p.t)


OPERATOR_POINT = re.compile(r"^(?P<op>regmean|fisher)-a(?P<alpha>[0-9.]+)$")  # pipeline/operators.py names


def operator_curves(points: Mapping[str, tuple[float | None, float | None]]) -> dict[str, list[CurvePoint]]:
    """{operator: its curve in α order, from adapted (α 0) to base (α 1)} for the `<op>-a<α>` candidates."""
    out: dict[str, list[CurvePoint]] = {}
    for name, (r, k) in points.items():
        m = OPERATOR_POINT.match(name)
        if m and r is not None and k is not None:
            out.setdefault(m["op"], []).append(CurvePoint(float(m["alpha"]), name, r, k))
    ends = [p for p in curve_from({n: v for n, v in points.items() if n in ("adapted", "base")})]
    return {op: sorted(pts + ends, key=lambda p: p.t) for op, pts in sorted(out.items())}


def r_on_curve(curve: Sequence[CurvePoint], k: float) -> float | None:
    """The curve's R at domain gain kept `k` (linear between neighbouring t); None outside its K range."""
    best = None
    for a, b in zip(curve, curve[1:], strict=False):
        lo, hi = sorted((a.gain_kept, b.gain_kept))
        if not lo <= k <= hi:
            continue
        w = 0.0 if hi == lo else (k - a.gain_kept) / (b.gain_kept - a.gain_kept)
        r = a.retention + w * (b.retention - a.retention)
        best = r if best is None else max(best, r)
    return best


class PairedRow(BaseModel):
    task: str
    group: str
    test: str
    diff: float  # plan − uniform point: accuracy (> 0 favours the plan) or NLL/token (< 0 favours the plan)
    p_value: float
    favours: str  # "plan" | "uniform" | "tie"


class CurveComparison(BaseModel):
    """One plan against the uniform curve at its K."""

    plan: str
    retention: float
    gain_kept: float
    curve_r: float | None = None  # the curve's R at the plan's K
    delta_r: float | None = None  # plan's R − curve_r (> 0: above the curve)
    nearest: str | None = None  # the uniform point nearest in K
    nearest_r: float | None = None
    nearest_k: float | None = None
    tests: list[PairedRow] = Field(default_factory=list)


def compare_to_curve(
    plans: Mapping[str, tuple[float | None, float | None]],
    curve: Sequence[CurvePoint],
    results: Mapping[str, EvalResult] | None = None,
    groups: Mapping[str, str] | None = None,
) -> list[CurveComparison]:
    """ΔR at equal K and paired tests against the nearest uniform point, for every plan with R and K."""
    uniform = [p for p in curve if p.name not in ("base", "adapted")]
    out = []
    for name, (r, k) in plans.items():
        if r is None or k is None:
            continue
        c = CurveComparison(plan=name, retention=r, gain_kept=k)
        c.curve_r = r_on_curve(curve, k)
        c.delta_r = None if c.curve_r is None else r - c.curve_r
        if uniform:
            near = min(uniform, key=lambda p: (abs(p.gain_kept - k), p.t))
            c.nearest, c.nearest_r, c.nearest_k = near.name, near.retention, near.gain_kept
            if results and name in results and near.name in results:
                c.tests = _paired(results[name], results[near.name], groups or {})
        out.append(c)
    return out


def _paired(a: EvalResult, b: EvalResult, groups: Mapping[str, str]) -> list[PairedRow]:
    rows = []
    for task in sorted(set(a.tasks) & set(b.tasks)):
        try:
            t = compare(a, b, task)
        except (ValueError, KeyError):
            continue  # no shared items
        better = -t.diff if a.tasks[task].kind == "perplexity" else t.diff
        favours = "plan" if better > 0 else "uniform" if better < 0 else "tie"
        rows.append(
            PairedRow(
                task=task, group=groups.get(task, ""), test=t.test, diff=t.diff, p_value=t.p_value, favours=favours
            )
        )
    return rows


def above_curve(comparisons: Sequence[CurveComparison]) -> list[str]:
    """Plans strictly above the curve (ΔR at equal K > 0)."""
    return [c.plan for c in comparisons if c.delta_r is not None and c.delta_r > 0]


def curve_sentence(comparisons: Sequence[CurveComparison], n_uniform: int) -> str:
    """One sentence for the report: which plans beat the uniform curve, or that none does."""
    if not n_uniform:
        return "No uniform-SLERP curve was evaluated (run with baselines to compare against it)."
    above = above_curve(comparisons)
    if not above:
        return (
            "No SPEAR-MM plan lies above the uniform-SLERP curve (ΔR at equal K ≤ 0 for every plan, or outside "
            "its K range): on this pair a single uniform t (mergekit slerp) is as good or better."
        )
    best = max((c for c in comparisons if c.plan in above), key=lambda c: c.delta_r)
    return (
        f"{len(above)} SPEAR-MM plan(s) lie above the uniform-SLERP curve; the best, {best.plan}, retains "
        f"ΔR = {best.delta_r:+.3f} more than the curve at its K = {best.gain_kept:.3f}."
    )

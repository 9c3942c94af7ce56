"""The uniform-SLERP curve: interpolation of R at a plan's K, ΔR, the one-sentence verdict, and the choice rule
that prefers plans above the curve."""

from __future__ import annotations

import pytest

from spear_mm.evaluation.uniform_curve import (
    above_curve,
    compare_to_curve,
    curve_from,
    curve_sentence,
    r_on_curve,
    uniform_t,
)
from spear_mm.pipeline.verdict import choose_above_curve as _choose_above_curve

# (R, K): adapted (t 0) forgets, base (t 1) keeps no gain; the curve is concave in between
POINTS = {
    "adapted": (0.70, 1.0),
    "uniform-t0.3": (0.90, 0.90),
    "uniform-t0.6": (0.97, 0.60),
    "base": (1.0, 0.0),
    "ties-d0.2": (0.5, 0.5),  # not on the curve
}


def test_curve_is_in_t_order_with_the_endpoints():
    curve = curve_from(POINTS)
    assert [(p.name, p.t) for p in curve] == [("adapted", 0), ("uniform-t0.3", 0.3), ("uniform-t0.6", 0.6), ("base", 1)]
    assert uniform_t("uniform-t0.35") == 0.35 and uniform_t("ties-d0.2") is None


def test_r_on_curve_interpolates_between_neighbours_in_t():
    curve = curve_from(POINTS)
    assert r_on_curve(curve, 0.9) == pytest.approx(0.90)
    assert r_on_curve(curve, 0.75) == pytest.approx(0.935)  # halfway between t 0.3 and 0.6
    assert r_on_curve(curve, 0.3) == pytest.approx(0.985)  # halfway between t 0.6 and the base
    assert r_on_curve(curve, 1.2) is None  # outside the curve's K range


def test_r_on_curve_takes_the_best_where_the_curve_passes_a_k_twice():
    """An overshooting CPT: K rises above 1 at small t, so K = 1.0 is met twice; the higher R counts."""
    curve = curve_from({"adapted": (0.7, 1.0), "uniform-t0.2": (0.9, 1.1), "uniform-t0.5": (0.95, 0.9), "base": (1, 0)})
    assert r_on_curve(curve, 1.0) == pytest.approx(0.925)


def test_delta_r_and_the_sentence():
    curve = curve_from(POINTS)
    cmp = compare_to_curve({"above": (0.96, 0.7), "below": (0.80, 0.90), "out": (0.9, 1.5)}, curve)
    by = {c.plan: c for c in cmp}
    assert by["above"].delta_r == pytest.approx(0.96 - (0.9 + 0.07 * 2 / 3)) and by["above"].nearest == "uniform-t0.6"
    assert by["below"].delta_r == pytest.approx(-0.10) and by["below"].nearest == "uniform-t0.3"
    assert by["out"].delta_r is None
    assert above_curve(cmp) == ["above"]
    assert "the best, above," in curve_sentence(cmp, 2)
    assert curve_sentence([by["below"]], 2).startswith("No SPEAR-MM plan lies above the uniform-SLERP curve")


def test_choice_prefers_a_plan_above_the_curve():
    points = dict(POINTS) | {"above": (0.95, 0.75)}
    pool = ["uniform-t0.3", "uniform-t0.6", "above", "adapted"]
    assert _choose_above_curve(points, pool, ["above"], None).chosen == "above"
    # without a plan above the curve the usual rule applies to everything
    assert _choose_above_curve(points, pool, [], None).chosen == "uniform-t0.3"  # best balance, 0.9
    # a target no plan above the curve meets: the whole pool decides
    assert _choose_above_curve(points, pool, ["above"], 0.96).chosen == "uniform-t0.6"

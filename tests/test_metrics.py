"""R, K, the Pareto front, paired tests and the EvalResult JSON format."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spear_mm.evaluation.metrics import (
    EvalResult,
    ItemRecord,
    TaskResult,
    compare,
    domain_gain_kept,
    gain_kept,
    general_retention,
    mcnemar,
    paired_bootstrap,
    pareto_front,
    tradeoff,
)


def result(name: str, general: dict[str, float], domain: dict[str, float]) -> EvalResult:
    tasks = {}
    for group, scores in (("general", general), ("domain", domain)):
        for task, score in scores.items():
            kind = "perplexity" if task.endswith("ppl") else "multiple_choice"
            tasks[task] = TaskResult(task=task, kind=kind, group=group, metric="acc", score=score, n=100)
    return EvalResult(model=name, tasks=tasks)


BASE = result("base", {"arc": 0.50, "wiki_ppl": 1 / 30}, {"fpb": 0.40, "reuters_ppl": 1 / 40})
ADAPTED = result("adapted", {"arc": 0.40, "wiki_ppl": 1 / 45}, {"fpb": 0.60, "reuters_ppl": 1 / 20})


def test_retention_is_the_mean_per_task_ratio():
    merged = result("m", {"arc": 0.45, "wiki_ppl": 1 / 36}, {"fpb": 0.55, "reuters_ppl": 1 / 25})
    r, per = general_retention(merged, BASE)
    assert per["arc"] == pytest.approx(0.9)
    assert per["wiki_ppl"] == pytest.approx(30 / 36)  # ppl(B)/ppl(M) when perplexity enters as 1/ppl
    assert r == pytest.approx((0.9 + 30 / 36) / 2)
    assert general_retention(BASE, BASE)[0] == pytest.approx(1.0)


def test_gain_kept_arithmetic_and_division_guard():
    merged = result("m", {"arc": 0.45, "wiki_ppl": 1 / 36}, {"fpb": 0.55, "reuters_ppl": 1 / 25})
    k, per = domain_gain_kept(merged, BASE, ADAPTED)
    assert per["fpb"] == pytest.approx(0.75)
    assert per["reuters_ppl"] == pytest.approx((1 / 25 - 1 / 40) / (1 / 20 - 1 / 40))
    assert k == pytest.approx((per["fpb"] + per["reuters_ppl"]) / 2)
    assert gain_kept(0.5, 0.4, 0.4) is None  # adapted gained nothing: undefined, not a division by zero
    assert gain_kept(0.5, 0.4, 0.4005) is None  # below eps (0.5% of the scores)
    # perplexity scale (1/ppl): 47.8 -> 45.8 is a real gain although the raw difference is 0.0009
    assert gain_kept(1 / 46.8, 1 / 47.8, 1 / 45.8) == pytest.approx(0.5, abs=0.03)
    assert gain_kept(1 / 47.7, 1 / 47.8, 1 / 47.75) is None  # 0.1%: nothing to keep
    assert gain_kept(0.5, 0.4, 0.3) is None  # adapted got worse: nothing to keep
    assert gain_kept(0.4, 0.4, 0.6) == 0.0 and gain_kept(0.6, 0.4, 0.6) == 1.0


def test_k_is_undefined_when_no_domain_task_gained():
    flat = result("adapted", {"arc": 0.4}, {"fpb": 0.40})
    t = tradeoff(result("m", {"arc": 0.5}, {"fpb": 0.45}), result("base", {"arc": 0.5}, {"fpb": 0.40}), flat)
    assert t.gain_kept is None and t.gain_kept_per_task == {"fpb": None} and t.retention == 1.0


def test_base_and_adapted_sit_at_the_reference_corners():
    assert tradeoff(BASE, BASE, ADAPTED).gain_kept == 0.0
    assert tradeoff(ADAPTED, BASE, ADAPTED).gain_kept == pytest.approx(1.0)


def test_pareto_front():
    points = {"a": (0.9, 0.9), "b": (0.95, 0.5), "c": (0.8, 0.8), "d": (0.9, 0.9), "e": (None, 1.0), "f": (1.0, 0.1)}
    assert pareto_front(points) == ["f", "b", "a", "d"]  # c is dominated by a; e has an undefined K


@given(st.dictionaries(st.text(min_size=1, max_size=3), st.tuples(st.floats(0, 2), st.floats(-1, 2)), max_size=12))
def test_pareto_front_points_are_not_dominated(points):
    front = pareto_front(points)
    for name in front:
        r, k = points[name]
        assert not any(r2 >= r and k2 >= k and (r2, k2) != (r, k) for r2, k2 in points.values())
    for name in set(points) - set(front):  # everything else is dominated by something
        r, k = points[name]
        assert any(r2 >= r and k2 >= k and (r2, k2) != (r, k) for r2, k2 in points.values())


def test_mcnemar_exact():
    a = [True] * 10 + [False] * 2 + [True] * 30
    b = [False] * 10 + [True] * 2 + [True] * 30
    t = mcnemar(a, b)
    assert (t.a_only, t.b_only, t.n) == (10, 2, 42)
    assert t.p_value == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert t.diff == pytest.approx(8 / 42)
    assert mcnemar([True, False], [True, False]).p_value == 1.0


def test_paired_bootstrap():
    a = [1.0 + 0.01 * (i % 7) for i in range(200)]
    same = paired_bootstrap(a, a)
    assert same.diff == 0.0 and same.p_value == 1.0
    shifted = paired_bootstrap([x + 0.2 for x in a], a, n_resamples=2000)
    assert shifted.diff == pytest.approx(0.2) and shifted.p_value < 0.01
    assert shifted.ci_low == pytest.approx(0.2) and shifted.ci_high == pytest.approx(0.2)


def test_compare_aligns_items_by_id():
    def res(name, correct, nll):
        items = [ItemRecord(id=str(i), correct=c) for i, c in enumerate(correct)]
        ppl_items = [ItemRecord(id=str(i), nll=x, tokens=10) for i, x in enumerate(nll)]
        return EvalResult(model=name, tasks={
            "mc": TaskResult(task="mc", kind="multiple_choice", metric="acc", score=0, n=len(items), items=items),
            "p": TaskResult(task="p", kind="perplexity", metric="inv_ppl", score=0, n=len(nll), items=ppl_items[::-1]),
        })  # fmt: skip

    a, b = res("a", [True] * 30, [20.0] * 30), res("b", [False] * 30, [25.0] * 30)
    assert compare(a, b, "mc").a_only == 30 and compare(a, b, "mc").p_value < 1e-6
    assert compare(a, b, "p").diff == pytest.approx(-0.5)  # NLL/token: a predicts better


def test_eval_result_json_round_trip(tmp_path):
    r = result("m", {"arc": 0.45}, {"fpb": 0.5})
    r.tasks["arc"].items = [ItemRecord(id="1", correct=True, pred="x", gold="x", lls=[-1.0, -2.0])]
    path = r.save(tmp_path / "eval" / "m.json")
    back = EvalResult.load(path)
    assert back == r and back.tasks["arc"].items[0].lls == [-1.0, -2.0]
    assert math.isnan(TaskResult(task="t", kind="k", metric="m", score=0, n=1).tokens_per_second)

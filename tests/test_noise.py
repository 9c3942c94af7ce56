"""Noise: tasks at chance level, paired tests on the tasks that decide R and K, and the choice rule that prefers
the simpler model when the rule's pick is not better beyond that noise."""

from __future__ import annotations

import pytest

from spear_mm.evaluation.metrics import EvalResult, ItemRecord, TaskResult, tradeoff
from spear_mm.evaluation.noise import (
    axes_text,
    beats,
    chance_level,
    chance_tasks,
    excluded_tasks,
    kept_chance_notes,
    paired_tests,
)
from spear_mm.pipeline.selection import Choice, choose, prefer_simpler


def _mc(name: str, correct: list[bool], group: str = "general", choices: int = 4) -> TaskResult:
    n = len(correct)
    p = sum(correct) / n
    items = [ItemRecord(id=str(i), correct=c, lls=[0.0] * choices) for i, c in enumerate(correct)]
    return TaskResult(task=name, kind="multiple_choice", group=group, metric="acc", score=p, n=n,
                      stderr=(p * (1 - p) / (n - 1)) ** 0.5, items=items)  # fmt: skip


def _ppl(name: str, nll: list[float], group: str = "domain") -> TaskResult:
    items = [ItemRecord(id=str(i), nll=x * 10, tokens=10) for i, x in enumerate(nll)]
    mean = sum(nll) / len(nll)
    return TaskResult(task=name, kind="perplexity", group=group, metric="inv_ppl", score=2.718281828 ** -mean,
                      n=len(nll), items=items)  # fmt: skip


def _result(model: str, *tasks: TaskResult) -> EvalResult:
    return EvalResult(model=model, tasks={t.task: t for t in tasks})


def test_chance_level_is_the_majority_share_else_one_over_the_choices():
    t = _mc("x", [True, False, False, False])
    assert chance_level(t) == pytest.approx(0.25)
    assert chance_level(t.model_copy(update={"majority_baseline": 0.6})) == 0.6
    assert chance_level(_ppl("p", [1.0, 2.0])) is None


def test_a_task_at_chance_for_base_and_adapted_is_left_out_of_r_and_k_unless_kept():
    # 8 items, 4 choices: 3/8 right is within two stderr of 0.25; 8/8 right is not
    noisy_b, noisy_a = _mc("noisy", [True] * 3 + [False] * 5), _mc("noisy", [True] * 2 + [False] * 6)
    sure = _mc("sure", [True] * 8)
    dom = _ppl("dom", [3.0] * 8)
    base = _result("base", noisy_b, sure, dom)
    adapted = _result("adapted", noisy_a, sure, _ppl("dom", [2.0] * 8))
    assert list(chance_tasks(base, adapted)) == ["noisy"]
    left_out = excluded_tasks(base, adapted)
    assert list(left_out) == ["noisy"] and "left out of R" in left_out["noisy"] and "n = 8" in left_out["noisy"]
    assert excluded_tasks(base, adapted, keep=True) == {}
    assert kept_chance_notes(base, adapted, keep=True)[0].endswith("kept (--keep-chance-tasks)")
    t = tradeoff(adapted, base, adapted, exclude=list(left_out))
    assert list(t.retention_per_task) == ["sure"] and t.retention == 1.0
    # the only general task at chance stays in R (else R would be undefined), with a note
    only = _result("base", noisy_b, dom)
    assert excluded_tasks(only, _result("adapted", noisy_a, dom)) == {}
    assert "every task of its group" in kept_chance_notes(only, _result("adapted", noisy_a, dom))[0]


def test_paired_tests_say_which_model_is_better_per_axis():
    a = _result("a", _mc("g", [True] * 8), _ppl("d", [2.0, 2.1, 1.9, 2.0, 2.2, 2.0, 1.8, 2.0]))
    b = _result("b", _mc("g", [True] * 7 + [False]), _ppl("d", [3.0, 3.1, 2.9, 3.0, 3.2, 3.0, 2.8, 3.0]))
    tests = paired_tests(a, b, ["g", "d"])
    by = {t.task: t for t in tests}
    assert by["g"].p_value == 1.0 and by["g"].favours == "a" and not by["g"].significant  # one item: noise
    assert by["d"].significant and by["d"].favours == "a"  # lower NLL on every item
    assert beats(tests, "a", "b") and not beats(tests, "b", "a")
    # a trade-off (a better on R, b on K, both beyond noise) is not noise: a's advantage stands
    c = _result("c", _mc("g", [True] * 8), _ppl("d", [4.0, 4.1, 3.9, 4.0, 4.2, 4.0, 3.8, 4.0]))
    d = _result("d", _mc("g", [False] * 8), _ppl("d", [2.0] * 8))
    trade = paired_tests(c, d, ["g", "d"])
    assert beats(trade, "c", "d") and beats(trade, "d", "c")
    assert axes_text(trade, "c", "d").startswith("R: c better (g McNemar p = 0.0078, n = 8); K: d better")
    text = axes_text(tests, "a", "b")
    assert text.startswith("R: not distinguishable from b (g McNemar p = 1, n = 8); K: a better (d paired bootstrap")


def test_the_simpler_model_wins_unless_the_pick_is_better_beyond_noise():
    points = {"plan": (0.95, 0.80), "uniform-t0.5": (0.90, 0.80), "uniform-t0.3": (0.80, 0.90), "adapted": (0.7, 1.0)}
    simplicity = {"plan": (1, 0.4), "uniform-t0.5": (0, 0.5), "uniform-t0.3": (0, 0.3), "adapted": (0, 0.0)}
    first = choose(points)
    assert first.chosen == "plan"
    tied = prefer_simpler(first, points, simplicity, lambda a, b: (False, "R: not distinguishable from " + b))
    assert tied.chosen == "uniform-t0.5" and tied.first_pick == "plan"  # the best simpler one by the rule
    assert "not better than uniform-t0.5 beyond noise" in tied.reason and "uniform merge" in tied.reason
    kept = prefer_simpler(first, points, simplicity, lambda a, b: (True, "R: plan better"))
    assert kept.chosen == "plan" and kept.first_pick is None and "beyond noise" in kept.reason
    # less restoration over more among uniform points; a met target must stay met
    pick = Choice(chosen="uniform-t0.5", rule="r", met_target=True)
    assert prefer_simpler(pick, points, simplicity, lambda a, b: (False, ""), 0.85).chosen == "uniform-t0.5"
    assert prefer_simpler(pick, points, simplicity, lambda a, b: (False, ""), 0.75).chosen == "uniform-t0.3"
    # nothing simpler: unchanged
    assert prefer_simpler(choose({"adapted": (0.7, 1.0)}), points, simplicity, lambda a, b: (False, "")).chosen == (
        "adapted"
    )

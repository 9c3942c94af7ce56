"""The run's choice with noise in view: the choice rule (selection.py) over R and K computed without the
chance-level tasks, restricted to the plans above the uniform curve when there are any, then the noise check
(`prefer_simpler`) with paired tests on the tasks that decide R and K."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from spear_mm.evaluation.metrics import EvalResult
from spear_mm.evaluation.noise import axes_text, beats, deciding_tasks, paired_tests
from spear_mm.evaluation.uniform_curve import uniform_t
from spear_mm.pipeline.candidates import Candidate
from spear_mm.pipeline.selection import Choice, Point, choose, prefer_simpler


def choose_above_curve(points, pool: list[str], above: list[str], target: float | None) -> Choice:
    """The choice rule, restricted to the plans above the uniform curve when there are any (and, with a target,
    when one of them meets it); otherwise over the whole pool."""
    if above:
        choice = choose({n: points[n] for n in above if n in pool}, target)
        if choice.chosen is not None and choice.met_target is not False:
            return choice.model_copy(update={"rule": choice.rule + ", among the plans above the uniform curve"})
    return choose({n: points[n] for n in pool}, target)


def simplicity(name: str, candidate: Candidate | None) -> tuple[int, float]:
    """(0, t) for plain CPT (t 0) and uniform SLERP, (1, mean layer t) for every selective or other merge."""
    if name == "adapted":
        return 0, 0.0
    if (t := uniform_t(name)) is not None:
        return 0, t
    ts = candidate.plan.layer_ts() if candidate is not None else []
    return 1, sum(ts) / len(ts) if ts else 1.0


def noisy_choice(
    points: Mapping[str, Point],
    pool: list[str],
    above: list[str],
    target: float | None,
    candidates: Sequence[Candidate],
    results: Mapping[str, EvalResult],
    excluded: Mapping[str, str],
) -> Choice:
    """The choice rule, then the noise check against the best simpler candidate of the pool."""
    choice = choose_above_curve(points, pool, above, target)
    by_name = {c.name: c for c in candidates}
    deciding = deciding_tasks(results["base"], excluded)

    def better(a: str, b: str) -> tuple[bool, str]:
        tests = paired_tests(results[a], results[b], deciding, names=(a, b))
        return beats(tests, a, b), axes_text(tests, a, b)

    ranks = {n: simplicity(n, by_name.get(n)) for n in pool if n in results}
    return prefer_simpler(choice, {n: points[n] for n in ranks}, ranks, better, target)

"""How much of a difference is noise: tasks at chance level, and paired tests of two models on the tasks that
decide R and K (docs/evaluation.md, "Noise").

A multiple-choice task is *at chance* when both the base and the adapted model score within two stderr of its
chance level (the majority-class share when every item has the same choices, else the mean 1/#choices): such a
task cannot tell models apart and by default enters neither R nor K (`keep_chance_tasks` keeps it). It stays
in R or K when leaving it out would leave that axis with no task at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from spear_mm.evaluation.metrics import EvalResult, TaskResult, compare

ALPHA = 0.05  # a paired test with p below this is a difference beyond noise


def chance_level(tr: TaskResult) -> float | None:
    """The accuracy of guessing: the majority-class share, else the mean 1/#choices; None for other kinds."""
    if tr.kind != "multiple_choice":
        return None
    if tr.majority_baseline is not None:
        return tr.majority_baseline
    sizes = [len(i.lls) for i in tr.items if i.lls]
    return sum(1 / s for s in sizes) / len(sizes) if sizes else None


def _near_chance(tr: TaskResult) -> bool:
    level = chance_level(tr)
    return level is not None and tr.stderr is not None and abs(tr.score - level) <= 2 * tr.stderr


def chance_tasks(base: EvalResult, adapted: EvalResult | None) -> dict[str, str]:
    """{task: why} for the tasks at chance level for both base and adapted (only base when there is no adapted)."""
    out = {}
    for task, tr in base.tasks.items():
        other = adapted.tasks.get(task) if adapted is not None else tr
        if other is not None and _near_chance(tr) and _near_chance(other):
            level = chance_level(tr)
            out[task] = (
                f"{task} is at chance level: base {tr.score:.3f} and adapted {other.score:.3f} are within two "
                f"stderr (±{2 * (tr.stderr or 0):.3f}, n = {tr.n}) of chance {level:.3f}"
            )
    return out


def excluded_tasks(base: EvalResult, adapted: EvalResult | None, keep: bool = False) -> dict[str, str]:
    """The chance-level tasks left out of R and K, {task: note}; none with `keep`, and never every task of a
    group (the group's chance-level tasks then stay in, and the note says so)."""
    if keep:
        return {}
    flagged = chance_tasks(base, adapted)
    out = {}
    for group in ("general", "domain"):
        tasks = [t for t, tr in base.tasks.items() if tr.group == group]
        hit = [t for t in tasks if t in flagged]
        if hit and len(hit) < len(tasks):
            out.update({t: flagged[t] + "; left out of " + ("R" if group == "general" else "K") for t in hit})
    return out


def kept_chance_notes(base: EvalResult, adapted: EvalResult | None, keep: bool = False) -> list[str]:
    """Notes for the chance-level tasks that stay in R or K (kept on request, or the group's only tasks)."""
    left_out = excluded_tasks(base, adapted, keep)
    why = "kept (--keep-chance-tasks)" if keep else "kept: every task of its group is at chance level"
    return [f"{note}; {why}" for t, note in chance_tasks(base, adapted).items() if t not in left_out]


@dataclass(frozen=True)
class TaskTest:
    """One paired test of model a against model b on one task; `favours` is a's or b's name, or 'tie'."""

    task: str
    group: str
    test: str
    n: int
    diff: float  # a − b: accuracy, or NLL/token (< 0 favours a)
    p_value: float
    favours: str

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA and self.favours != "tie"

    def text(self) -> str:
        p = "p < 0.001" if self.p_value < 0.001 else f"p = {self.p_value:.2g}"
        test = "McNemar" if self.test.startswith("mcnemar") else "paired bootstrap"
        return f"{self.task} {test} {p}, n = {self.n}"


def paired_tests(
    a: EvalResult, b: EvalResult, tasks: Iterable[str], names: tuple[str, str] | None = None, n_resamples: int = 2000
) -> list[TaskTest]:
    """Paired tests of a against b on each of `tasks` both have (items they share); `names` label the two
    models in `favours` (default: their result's model names)."""
    name_a, name_b = names or (a.model, b.model)
    out = []
    for task in tasks:
        if task not in a.tasks or task not in b.tasks:
            continue
        try:
            t = compare(a, b, task, n_resamples=n_resamples)
        except ValueError:
            continue
        better = -t.diff if a.tasks[task].kind == "perplexity" else t.diff
        favours = name_a if better > 0 else name_b if better < 0 else "tie"
        out.append(TaskTest(task, a.tasks[task].group, t.test, t.n, t.diff, t.p_value, favours))
    return out


def deciding_tasks(base: EvalResult, excluded: Mapping[str, str]) -> list[str]:
    """The general and domain tasks that enter R and K."""
    return [t for t, tr in base.tasks.items() if tr.group in ("general", "domain") and t not in excluded]


def beats(tests: Iterable[TaskTest], a: str, b: str) -> bool:
    """a is better than b beyond noise: significantly better on at least one task (a trade-off — b better on
    another axis, as every restoration costs some K — does not cancel it; the choice rule weighed that)."""
    return any(t.significant and t.favours == a for t in tests)


def axes_text(tests: Iterable[TaskTest], a: str, b: str) -> str:
    """Per axis, what the tests say of a against b: `R: not distinguishable from b (…); K: b better (…)`."""
    parts = []
    for group, axis in (("general", "R"), ("domain", "K")):
        mine = [t for t in tests if t.group == group]
        if not mine:
            continue
        wins = {t.favours for t in mine if t.significant}
        verdict = (
            f"not distinguishable from {b}"
            if not wins
            else f"{a} better"
            if wins == {a}
            else f"{b} better"
            if wins == {b}
            else "mixed"
        )
        parts.append(f"{axis}: {verdict} ({'; '.join(t.text() for t in mine)})")
    return "; ".join(parts) or "no task with shared items"

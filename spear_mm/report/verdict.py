"""The report's first lines: the verdict (chosen model, R, K, ΔR at equal K against the uniform-SLERP curve, and
whether it differs beyond noise from the nearest uniform point) and the run's real noise level (n, stderr)."""

from __future__ import annotations

from collections.abc import Mapping

from spear_mm.evaluation.metrics import EvalResult
from spear_mm.evaluation.noise import axes_text, deciding_tasks, paired_tests
from spear_mm.evaluation.uniform_curve import curve_from, r_on_curve

Points = Mapping[str, tuple[float | None, float | None]]


def _f(x: float | None) -> str:
    return "undefined" if x is None else f"{x:.3f}"


def verdict(
    chosen: str | None,
    points: Points,
    results: Mapping[str, EvalResult],
    base: str,
    excluded: Mapping[str, str],
    reason: str = "",
) -> str:
    """One paragraph: what was chosen, where it lies against the uniform curve, and whether that is noise."""
    if chosen is None or chosen not in points:
        if reason:
            return f"No model was chosen: {reason}."
        return "No model was chosen (summary.json names none): `spear-mm report RUN --chosen NAME` gives its verdict."
    r, k = points[chosen]
    text = f"Chosen: {chosen} — R = {_f(r)}, K = {_f(k)}"
    curve = curve_from(points)
    uniform = [p for p in curve if p.name not in ("base", "adapted")]
    if not uniform or r is None or k is None:
        text += ". No uniform-SLERP curve was evaluated, so there is no ΔR at equal K."
    elif any(p.name == chosen for p in curve):
        text += "; it lies on the uniform-SLERP curve (ΔR at equal K = 0 by construction)."
    else:
        on_curve = r_on_curve(curve, k)
        delta = "outside the curve's K range" if on_curve is None else f"{r - on_curve:+.3f}"
        near = min(uniform, key=lambda p: (abs(p.gain_kept - k), p.t))
        text += f"; ΔR at equal K against the uniform-SLERP curve = {delta}"
        if chosen in results and near.name in results:
            tests = paired_tests(
                results[chosen], results[near.name], deciding_tasks(results[base], excluded), names=(chosen, near.name)
            )
            text += f". Against the nearest uniform point in K, {near.name} (K = {near.gain_kept:.3f}): "
            text += axes_text(tests, chosen, near.name)
        text += "."
    return text + (f" Choice: {reason}." if reason else "")


def noise_sentence(results: Mapping[str, EvalResult], base: str) -> str:
    """The run's n per task and the largest accuracy stderr, from the base model's results."""
    tasks = results[base].tasks if base in results else {}
    if not tasks:
        return ""
    ns = sorted({tr.n for tr in tasks.values()})
    n = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}"
    acc = [(tr.stderr, t) for t, tr in tasks.items() if tr.kind != "perplexity" and tr.stderr is not None]
    text = f"Items per task: {n}."
    if acc:
        se, task = max(acc)
        text += (
            f" The largest accuracy stderr here is {se * 100:.1f} points ({task}); a difference of one or two "
            f"items out of {tasks[task].n} is noise, which is why paired tests decide."
        )
    return text


def result_warnings(results: Mapping[str, EvalResult]) -> list[str]:
    """Different tokenizers, different items, skipped tasks."""
    out = []
    if len({r.tokenizer for r in results.values()}) > 1:
        out.append(
            "the models use different tokenizers: per-token perplexities are not comparable "
            "(compare bits_per_byte in the JSON results)."
        )
    for task in {t for r in results.values() for t in r.tasks}:
        ids = {tuple(i.id for i in r.tasks[task].items) for r in results.values() if task in r.tasks}
        if len(ids) > 1:
            out.append(f"{task}: the models were evaluated on different items; paired tests use the shared ones.")
    skipped: dict[tuple[str, str], list[str]] = {}
    for m, r in results.items():
        for t, why in r.skipped.items():
            skipped.setdefault((t, why.split(". ")[0]), []).append(m)
    for (t, why), models in skipped.items():
        who = "every model" if len(models) == len(results) and len(results) > 1 else ", ".join(models)
        out.append(f"task {t} skipped for {who} ({why})")
    return out

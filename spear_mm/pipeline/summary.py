"""The assembly of a `spear-mm run`'s `RunSummary` (RUN/summary.json): R, K, the Pareto front, the choice, the
comparisons, the notes, and the cost accounting against one CPT run. The schema lives in report/schema.py
(its models are re-exported here) and the report's prose (notes, tables) in report/tables.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from spear_mm.evaluation.metrics import pareto_front, tradeoff
from spear_mm.evaluation.noise import excluded_tasks, kept_chance_notes
from spear_mm.evaluation.uniform_curve import above_curve, compare_to_curve, curve_from, curve_sentence
from spear_mm.io.hub import hub_label
from spear_mm.pipeline.context import RunContext
from spear_mm.pipeline.selection import compare_to_baselines
from spear_mm.pipeline.verdict import noisy_choice
from spear_mm.report.schema import CostSummary, ModelEntry, RunSummary, StageCost
from spear_mm.report.tables import run_notes

log = logging.getLogger(__name__)
__all__ = ["CostSummary", "ModelEntry", "RunSummary", "StageCost", "cost_summary", "cpt_cost", "summarise"]


def cpt_cost(adapted: Path, override: float | None) -> tuple[float | None, str | None, str | None]:
    """(seconds, source, device) of one CPT run: --cpt-cost-seconds, else adapted/cost.json (spear-mm cpt)."""
    if override is not None:
        return float(override), "--cpt-cost-seconds", None
    path = adapted / "cost.json"
    if not path.is_file():
        return None, None, None
    try:
        data = json.loads(path.read_text())
        return float(data["wall_seconds"]), str(path), data.get("device_name") or data.get("device")
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("%s: unreadable (%s); no CPT cost to compare with", path, exc)
        return None, None, None


def cost_summary(
    entries: dict[str, ModelEntry], reference: dict[str, ModelEntry], score_seconds: float, device: str, cpt
) -> CostSummary:
    merged = [e for e in entries.values() if e.kind != "adapted"]
    n = max(len(merged), 1)
    mean_merge = sum(e.merge_seconds for e in merged) / n
    mean_eval = sum(e.eval_seconds for e in merged) / n
    per_config = round(score_seconds + mean_merge + mean_eval, 3)  # the ratios below use the figure reported
    total = score_seconds + sum(e.merge_seconds + e.eval_seconds for e in [*merged, *reference.values()])
    cpt_seconds, source, cpt_device = cpt
    adapted_eval = reference["adapted"].eval_seconds if "adapted" in reference else 0.0
    return CostSummary(
        device=device,
        score_seconds=round(score_seconds, 3),
        mean_merge_seconds=round(mean_merge, 3),
        mean_eval_seconds=round(mean_eval, 3),
        per_configuration_seconds=per_config,
        configurations=len(merged),
        total_seconds=round(total, 3),
        cpt_seconds=cpt_seconds,
        cpt_source=source,
        cpt_device=cpt_device,
        ratio=_significant(per_config / cpt_seconds) if cpt_seconds else None,
        ratio_with_eval=_significant(per_config / (cpt_seconds + adapted_eval)) if cpt_seconds else None,
    )


def summarise(ctx: RunContext, candidates, results, stages, skipped, *, suites: str, cpt) -> RunSummary:
    """R, K, Pareto front, choice and comparisons of the evaluated models, as a RunSummary."""
    config, pair = ctx.config, ctx.pair
    device, target_retention, choose_from = config.device, config.target_retention, config.choose_from
    base, adapted = results["base"], results["adapted"]
    by_name = {c.name: c for c in candidates}
    entries: dict[str, ModelEntry] = {}
    excluded = excluded_tasks(base, adapted, config.keep_chance_tasks)
    for name, r in results.items():
        t = tradeoff(r, base, adapted, exclude=list(excluded))
        c = by_name.get(name)
        entries[name] = ModelEntry(
            name=name,
            kind=c.kind if c else name,
            description=c.description if c else ("base model (B)" if name == "base" else "plain CPT (A)"),
            method=c.plan.method if c else None,
            plan=f"plans/{name}.yaml" if c else None,
            retention=t.retention,
            gain_kept=t.gain_kept,
            retention_per_task=t.retention_per_task,
            gain_kept_per_task=t.gain_kept_per_task,
            eval_seconds=round(r.seconds, 3),
            merge_seconds=getattr(r, "merge_seconds", 0.0),
            n_merged=getattr(r, "n_merged", None) if c else None,
            n_lerp_fallback=getattr(r, "n_lerp_fallback", None) if c else None,
        )
    score_seconds = next(s.seconds for s in stages if s.name == "analyze")
    for e in entries.values():
        if e.name in by_name:
            e.cost_seconds = round(score_seconds + e.merge_seconds + e.eval_seconds, 3)
    merged = [c.name for c in candidates]
    front = pareto_front({n: (entries[n].retention, entries[n].gain_kept) for n in merged})
    for n in front:
        entries[n].on_front = True
    pool = [c.name for c in candidates if c.kind != "baseline"] if choose_from == "plans" else [*merged, "adapted"]
    points = {n: (e.retention, e.gain_kept) for n, e in entries.items()}
    curve = curve_from(points)
    plan_names = [c.name for c in candidates if c.kind != "baseline"]
    n_uniform = sum(1 for p in curve if p.name not in ("base", "adapted"))
    curve_cmp = (
        compare_to_curve(
            {n: points[n] for n in plan_names}, curve, results, {n: tr.group for n, tr in base.tasks.items()}
        )
        if n_uniform
        else []
    )
    curve_note = curve_sentence(curve_cmp, n_uniform)  # no uniform point: no curve, not the adapted–base chord
    choice = noisy_choice(points, pool, above_curve(curve_cmp), target_retention, candidates, results, excluded)
    if choice.chosen is None:
        log.warning("no model could be chosen: %s", choice.reason)
    baseline_names = ["adapted", *(c.name for c in candidates if c.kind == "baseline")]
    plans = [c.name for c in candidates if c.kind != "baseline"]
    comparisons = compare_to_baselines(
        {n: (entries[n].retention, entries[n].gain_kept) for n in [*plans, *baseline_names]},
        {n: (entries[n].retention, entries[n].gain_kept) for n in baseline_names},
        plans,
    )
    reference = {n: entries.pop(n) for n in ("base", "adapted")}
    cost = cost_summary(entries, reference, score_seconds, device, cpt)
    chance = [*excluded.values(), *kept_chance_notes(base, adapted, config.keep_chance_tasks)]
    notes = run_notes(f"{choice.rule} — {choice.reason}", curve_note, chance, list(entries.values()), skipped)
    return RunSummary(
        title=config.title or f"SPEAR-MM run: {pair.adapted.path.name} against {pair.base.path.name}",
        run_dir=str(ctx.run_dir),
        base_path=str(pair.base.path),
        adapted_path=str(pair.adapted.path),
        base_hub=hub_label(pair.base.path),
        adapted_hub=hub_label(pair.adapted.path),
        base_fingerprint=ctx.fp_b,
        adapted_fingerprint=ctx.fp_a,
        suites=suites,
        limit=config.limit,
        seed=config.seed,
        tasks={n: tr.group for n, tr in base.tasks.items()},
        skipped_tasks=skipped,
        chosen=choice.chosen,
        choice_rule=choice.rule,
        choice_reason=choice.reason,
        first_pick=choice.first_pick,
        choice_tests=choice.tests,
        excluded_tasks=excluded,
        keep_chance_tasks=config.keep_chance_tasks,
        target_retention=target_retention,
        baselines=baseline_names,
        candidates=entries,
        reference=reference,
        pareto_front=front,
        comparisons=comparisons,
        uniform_curve=curve,
        curve_comparisons=curve_cmp,
        curve_note=curve_note,
        costs={n: e.cost_seconds for n, e in entries.items() if e.cost_seconds is not None},
        cost=cost,
        stages=stages,
        notes=notes,
    )


def _significant(x: float, digits: int = 4) -> float:
    """x rounded to `digits` significant digits (a ratio of 0.0123 keeps its precision, unlike round(x, 4))."""
    return float(f"{x:.{digits}g}")

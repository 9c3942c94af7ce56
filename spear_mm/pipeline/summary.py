"""What a `spear-mm run` produced, as typed data: `RunSummary` (saved as RUN/summary.json, read by report.py),
the cost accounting against one CPT run, and the extra report tables (choice, baselines, cost)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from spear_mm import __version__
from spear_mm.evaluation.metrics import pareto_front, tradeoff
from spear_mm.evaluation.noise import excluded_tasks, kept_chance_notes
from spear_mm.evaluation.uniform_curve import (
    CurveComparison,
    CurvePoint,
    above_curve,
    compare_to_curve,
    curve_from,
    curve_sentence,
)
from spear_mm.io.files import atomic_write_text
from spear_mm.io.hub import hub_label
from spear_mm.pipeline.context import RunContext
from spear_mm.pipeline.selection import Comparison, compare_to_baselines
from spear_mm.pipeline.verdict import noisy_choice
from spear_mm.planning.plan import Plan

log = logging.getLogger(__name__)
Role = Literal["base", "adapted", "policy", "sweep", "baseline", "operator"]


class ModelEntry(BaseModel):
    """One evaluated model: its role, plan, R and K, and what it cost."""

    name: str
    kind: Role
    description: str = ""
    method: str | None = None
    plan: str | None = None  # path of the plan YAML, relative to the run folder
    retention: float | None = None
    gain_kept: float | None = None
    retention_per_task: dict[str, float | None] = Field(default_factory=dict)
    gain_kept_per_task: dict[str, float | None] = Field(default_factory=dict)
    on_front: bool = False
    eval_seconds: float = 0.0
    merge_seconds: float = 0.0
    cost_seconds: float | None = None  # score (once) + merge + evaluate: the cost of this configuration
    n_merged: int | None = None
    n_lerp_fallback: int | None = None


class StageCost(BaseModel):
    """Wall time of one stage. `seconds` is what the stage cost when it ran (also when this run skipped it)."""

    name: str
    seconds: float
    device: str
    status: Literal["ran", "skipped", "partly skipped"] = "ran"
    detail: str = ""


class CostSummary(BaseModel):
    """Cost per configuration (score once + merge + evaluate) against one measured CPT run."""

    device: str
    score_seconds: float
    mean_merge_seconds: float
    mean_eval_seconds: float
    per_configuration_seconds: float
    configurations: int
    total_seconds: float  # score + every merge and evaluation of this run (base and adapted included)
    cpt_seconds: float | None = None
    cpt_source: str | None = None
    cpt_device: str | None = None
    ratio: float | None = None  # per_configuration / cpt (the paper: ≈ 0.1)
    ratio_with_eval: float | None = None  # per_configuration / (cpt + evaluating the re-trained model)


class RunSummary(BaseModel):
    """RUN/summary.json: the run's models, choice, comparisons and costs."""

    spear_mm_summary: Literal[1] = 1
    title: str = "SPEAR-MM run"
    run_dir: str
    base: str = "base"
    adapted: str = "adapted"
    base_path: str
    adapted_path: str
    base_hub: str | None = None  # 'org/name@<commit>' when the model came from the hub cache
    adapted_hub: str | None = None
    base_fingerprint: str
    adapted_fingerprint: str
    suites: str
    limit: int | None
    seed: int
    tasks: dict[str, str] = Field(default_factory=dict)  # task -> group
    skipped_tasks: dict[str, str] = Field(default_factory=dict)  # task -> reason
    chosen: str | None
    chosen_model_path: str | None = None
    choice_rule: str
    choice_reason: str = ""
    first_pick: str | None = None  # the rule's pick when a simpler model not distinguishable from it was chosen
    choice_tests: str = ""  # the paired tests of the noise check
    excluded_tasks: dict[str, str] = Field(default_factory=dict)  # chance-level tasks left out of R and K
    keep_chance_tasks: bool = False
    target_retention: float | None = None
    baselines: list[str] = Field(default_factory=list)
    candidates: dict[str, ModelEntry] = Field(default_factory=dict)  # policies, sweep and baselines
    reference: dict[str, ModelEntry] = Field(default_factory=dict)  # base and adapted
    pareto_front: list[str] = Field(default_factory=list)
    comparisons: list[Comparison] = Field(default_factory=list)
    uniform_curve: list[CurvePoint] = Field(default_factory=list)  # adapted (t 0), uniform-t*, base (t 1)
    curve_comparisons: list[CurveComparison] = Field(default_factory=list)  # ΔR at equal K per plan
    curve_note: str = ""
    costs: dict[str, float] = Field(default_factory=dict)  # name -> cost_seconds (the report's "cost s")
    cost: CostSummary
    stages: list[StageCost] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    tables: list[dict[str, Any]] = Field(default_factory=list)  # extra report tables: title, columns, rows, text
    report_html: str | None = None
    report_md: str | None = None
    seconds: float = 0.0
    spear_mm_version: str = __version__

    def entry(self, name: str) -> ModelEntry:
        return self.candidates.get(name) or self.reference[name]

    def save(self, path: Path) -> Path:

        return atomic_write_text(path, self.model_dump_json(indent=1))

    @classmethod
    def load(cls, path: str | Path) -> RunSummary:
        path = Path(path)
        return cls.model_validate_json((path / "summary.json" if path.is_dir() else path).read_text())


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
    fallback = [(e.n_lerp_fallback or 0, e.n_merged or 0) for e in entries.values() if e.method == "slerp"]
    notes = [
        f"Choice: {choice.rule} — {choice.reason}.",
        curve_note,
        *excluded.values(),
        *kept_chance_notes(base, adapted, config.keep_chance_tasks),
    ]
    if fallback and sum(m for _, m in fallback):
        notes.append(
            f"SLERP fell back to LERP (|cos| > 0.9995) on {sum(f for f, _ in fallback)} of "
            f"{sum(m for _, m in fallback)} interpolated tensors over the SLERP candidates: for small CPT "
            "deltas SLERP and LERP differ by < 1e-3."
        )
    notes += [f"Task {t} was skipped: {why}" for t, why in skipped.items()]
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


def _curve_table(summary: RunSummary) -> dict[str, Any]:
    rows = []
    for c in summary.curve_comparisons:
        tests = "; ".join(f"{t.task} {t.diff:+.4f} (p={t.p_value:.3g}, {t.favours})" for t in c.tests) or "—"
        near = f"{c.nearest} (R {_f(c.nearest_r)}, K {_f(c.nearest_k)})" if c.nearest else "—"
        rows.append(
            [c.plan, f"{c.retention:.3f}", f"{c.gain_kept:.3f}", _f(c.curve_r), _f(c.delta_r, "+.3f"), near, tests]
        )
    curve = ", ".join(f"t={p.t:g}: R {p.retention:.3f}, K {p.gain_kept:.3f}" for p in summary.uniform_curve)
    return {
        "title": "SPEAR-MM plans against the uniform-SLERP curve (ΔR at equal K)",
        "text": summary.curve_note + " ΔR = the plan's R minus the curve's R interpolated at the plan's K (curve in "
        "t order, adapted = t 0, base = t 1; '—': the plan's K is outside the curve's range). Paired tests on every "
        "task against the uniform point nearest in K (McNemar for accuracy; paired bootstrap of NLL/token, where a "
        "negative diff favours the plan). Curve: " + (curve or "none") + ".",
        "columns": ["plan", "R", "K", "curve R at K", "ΔR at equal K", "nearest uniform point", "paired tests"],
        "rows": rows,
    }


def _planner_table(path: Path) -> dict[str, Any] | None:
    """The measured planner's probes, spend and every unit's t with its measured effects."""

    try:
        plan = Plan.load(path)
    except Exception:  # noqa: BLE001 - a missing or hand-broken plan only loses this table
        return None
    m = plan.measurement
    if m is None:
        return None
    effects: dict[str, dict[float, Any]] = {}
    for e in m.effects:
        effects.setdefault(e.unit, {})[e.t] = e
    rows = []
    for unit, by_t in effects.items():
        cells = [f"{e.general_recovered:+.4f} / {e.domain_lost:+.4f}" for _, e in sorted(by_t.items())]
        rows.append([unit, f"{plan.unit_t(unit):g}", f"{m.greedy.get(unit, 0.0):g}", *cells])
    g, d = m.nll_general, m.nll_domain
    ts = sorted({e.t for e in m.effects})
    return {
        "title": "Measured planner: probes, spend and every unit's t",
        "text": f"Objective: {m.objective}. General probe ({m.general_tokens} tokens): NLL base {g['base']:.4f}, "
        f"adapted {g['adapted']:.4f}, plan {g['plan']:.4f}. Domain probe ({m.domain_tokens} tokens): NLL base "
        f"{d['base']:.4f}, adapted {d['adapted']:.4f}, plan {d['plan']:.4f}. {m.evaluations} probe evaluations run "
        f"({m.cached} from the cache; refinement budget {m.budget}) in {m.seconds:.1f} s. Effects: general NLL "
        "recovered / domain NLL lost when the unit alone is restored at that t (nats per token).",
        "columns": ["unit", "t (plan)", "t (knapsack)", *(f"effect at t={t:g}" for t in ts)],
        "rows": rows,
    }


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "—" if x is None else format(x, fmt)


def report_tables(summary: RunSummary) -> list[dict[str, Any]]:
    """The run-specific tables of the report: SPEAR-MM against the baselines, and the cost accounting."""
    tables = []
    if summary.comparisons:
        rows = [
            [
                c.candidate,
                f"{c.retention:.3f}",
                f"{c.gain_kept:.3f}",
                f"{c.equal_k_baseline} (K {_f(c.equal_k_baseline_k)}, R {_f(c.equal_k_baseline_r)})",
                _f(c.delta_r, "+.3f"),
                f"{c.equal_r_baseline} (R {_f(c.equal_r_baseline_r)}, K {_f(c.equal_r_baseline_k)})",
                _f(c.delta_k, "+.3f"),
                ", ".join(c.dominated_by) or "none",
            ]
            for c in summary.comparisons
        ]
        tables.append(
            {
                "title": "SPEAR-MM plans against the baselines at equal K and at equal R",
                "text": "For each plan: the baseline with the nearest K and how much more R the plan retains "
                "(ΔR > 0: better at equal domain gain), and the baseline with the nearest R and how much more K "
                "the plan keeps (ΔK > 0: better at equal retention). Baselines: " + ", ".join(summary.baselines) + ".",
                "columns": ["plan", "R", "K", "nearest-K baseline", "ΔR", "nearest-R baseline", "ΔK", "dominated by"],
                "rows": rows,
            }
        )
    if summary.curve_comparisons or summary.curve_note:
        tables.append(_curve_table(summary))
    if "measured" in summary.candidates and (
        table := _planner_table(Path(summary.run_dir) / "plans" / "measured.yaml")
    ):
        tables.append(table)
    c = summary.cost
    planner = [s for s in summary.stages if s.name.startswith("measured planner")]
    planner_text = "".join(
        f" The measured planner's probes cost {s.seconds:.1f} s ({s.detail})"
        + (f" = {s.seconds / c.cpt_seconds:.3f} of one CPT run." if c.cpt_seconds else ".")
        for s in planner
    )
    stage_rows = [[s.name, f"{s.seconds:.2f}", s.device, s.status, s.detail] for s in summary.stages]
    tables.append(
        {
            "title": "Cost accounting",
            "text": (
                f"Per configuration: score once ({c.score_seconds:.2f} s) + merge ({c.mean_merge_seconds:.2f} s, "
                f"mean) + evaluate ({c.mean_eval_seconds:.2f} s, mean) = {c.per_configuration_seconds:.2f} s on "
                f"{c.device}, over {c.configurations} configurations. "
                + (
                    f"One CPT run cost {c.cpt_seconds:.1f} s ({c.cpt_source}"
                    + (f", {c.cpt_device}" if c.cpt_device else "")
                    + f"): ratio {c.ratio:.3f} ({(1 - c.ratio) * 100:.1f}% lower cost per configuration; "
                    f"{c.ratio_with_eval:.3f} when the re-trained model's evaluation is counted too). "
                    "The paper reports about 90% lower cost."
                    if c.cpt_seconds
                    else "No CPT cost known (adapted/cost.json absent; pass --cpt-cost-seconds) — no ratio."
                )
                + planner_text
            ),
            "columns": ["stage", "seconds", "device", "status", "detail"],
            "rows": stage_rows,
        }
    )
    return tables


def _significant(x: float, digits: int = 4) -> float:
    """x rounded to `digits` significant digits (a ratio of 0.0123 keeps its precision, unlike round(x, 4))."""
    return float(f"{x:.{digits}g}")

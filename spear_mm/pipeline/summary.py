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
from spear_mm.io.files import atomic_write_text
from spear_mm.io.hub import hub_label
from spear_mm.pipeline.context import RunContext
from spear_mm.pipeline.selection import Comparison, choose, compare_to_baselines

log = logging.getLogger(__name__)
Role = Literal["base", "adapted", "policy", "sweep", "baseline"]


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
    target_retention: float | None = None
    baselines: list[str] = Field(default_factory=list)
    candidates: dict[str, ModelEntry] = Field(default_factory=dict)  # policies, sweep and baselines
    reference: dict[str, ModelEntry] = Field(default_factory=dict)  # base and adapted
    pareto_front: list[str] = Field(default_factory=list)
    comparisons: list[Comparison] = Field(default_factory=list)
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
    for name, r in results.items():
        t = tradeoff(r, base, adapted)
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
    choice = choose({n: (entries[n].retention, entries[n].gain_kept) for n in pool}, target_retention)
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
    notes = [f"Choice: {choice.rule} — {choice.reason}."]
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
        target_retention=target_retention,
        baselines=baseline_names,
        candidates=entries,
        reference=reference,
        pareto_front=front,
        comparisons=comparisons,
        costs={n: e.cost_seconds for n, e in entries.items() if e.cost_seconds is not None},
        cost=cost,
        stages=stages,
        notes=notes,
    )


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
    c = summary.cost
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
            ),
            "columns": ["stage", "seconds", "device", "status", "detail"],
            "rows": stage_rows,
        }
    )
    return tables


def _significant(x: float, digits: int = 4) -> float:
    """x rounded to `digits` significant digits (a ratio of 0.0123 keeps its precision, unlike round(x, 4))."""
    return float(f"{x:.{digits}g}")

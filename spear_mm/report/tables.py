"""The run's prose for the report: its notes, and the run-specific tables, in words: SPEAR-MM against the
baselines (at equal K and at equal R), against the uniform-SLERP curve, the measured planner's probes and the
cost accounting. `spear-mm run` stores them in summary.json (`notes`, `tables`), so `spear-mm report` shows them
for that run as they were written."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spear_mm.planning.plan import Plan
from spear_mm.report.schema import ModelEntry, ReportTable, RunSummary


def run_notes(
    choice: str, curve_note: str, chance: Sequence[str], entries: Sequence[ModelEntry], skipped: Mapping[str, str]
) -> list[str]:
    """The report's notes: the choice (rule — reason), the curve sentence, the chance-level tasks, SLERP's LERP
    fallback over the SLERP candidates (when any tensor was interpolated) and every skipped task."""
    notes = [f"Choice: {choice}.", curve_note, *chance]
    fallback = [(e.n_lerp_fallback or 0, e.n_merged or 0) for e in entries if e.method == "slerp"]
    if fallback and sum(m for _, m in fallback):
        notes.append(
            f"SLERP fell back to LERP (|cos| > 0.9995) on {sum(f for f, _ in fallback)} of "
            f"{sum(m for _, m in fallback)} interpolated tensors over the SLERP candidates: for small CPT "
            "deltas SLERP and LERP differ by < 1e-3."
        )
    return notes + [f"Task {t} was skipped: {why}" for t, why in skipped.items()]


def _curve_table(summary: RunSummary) -> ReportTable:
    rows = []
    for c in summary.curve_comparisons:
        tests = "; ".join(f"{t.task} {t.diff:+.4f} (p={t.p_value:.3g}, {t.favours})" for t in c.tests) or "—"
        near = f"{c.nearest} (R {_f(c.nearest_r)}, K {_f(c.nearest_k)})" if c.nearest else "—"
        rows.append(
            [c.plan, f"{c.retention:.3f}", f"{c.gain_kept:.3f}", _f(c.curve_r), _f(c.delta_r, "+.3f"), near, tests]
        )
    curve = ", ".join(f"t={p.t:g}: R {p.retention:.3f}, K {p.gain_kept:.3f}" for p in summary.uniform_curve)
    return ReportTable(
        title="SPEAR-MM plans against the uniform-SLERP curve (ΔR at equal K)",
        text=summary.curve_note + " ΔR = the plan's R minus the curve's R interpolated at the plan's K (curve in "
        "t order, adapted = t 0, base = t 1; '—': the plan's K is outside the curve's range). Paired tests on every "
        "task against the uniform point nearest in K (McNemar for accuracy; paired bootstrap of NLL/token, where a "
        "negative diff favours the plan). Curve: " + (curve or "none") + ".",
        columns=["plan", "R", "K", "curve R at K", "ΔR at equal K", "nearest uniform point", "paired tests"],
        rows=rows,
    )


def _planner_table(path: Path) -> ReportTable | None:
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
    return ReportTable(
        title="Measured planner: probes, spend and every unit's t",
        text=f"Objective: {m.objective}. General probe ({m.general_tokens} tokens): NLL base {g['base']:.4f}, "
        f"adapted {g['adapted']:.4f}, plan {g['plan']:.4f}. Domain probe ({m.domain_tokens} tokens): NLL base "
        f"{d['base']:.4f}, adapted {d['adapted']:.4f}, plan {d['plan']:.4f}. {m.evaluations} probe evaluations run "
        f"({m.cached} from the cache; refinement budget {m.budget}) in {m.seconds:.1f} s. Effects: general NLL "
        "recovered / domain NLL lost when the unit alone is restored at that t (nats per token).",
        columns=["unit", "t (plan)", "t (knapsack)", *(f"effect at t={t:g}" for t in ts)],
        rows=rows,
    )


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "—" if x is None else format(x, fmt)


def report_tables(summary: RunSummary) -> list[ReportTable]:
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
            ReportTable(
                title="SPEAR-MM plans against the baselines at equal K and at equal R",
                text="For each plan: the baseline with the nearest K and how much more R the plan retains "
                "(ΔR > 0: better at equal domain gain), and the baseline with the nearest R and how much more K "
                "the plan keeps (ΔK > 0: better at equal retention). Baselines: " + ", ".join(summary.baselines) + ".",
                columns=["plan", "R", "K", "nearest-K baseline", "ΔR", "nearest-R baseline", "ΔK", "dominated by"],
                rows=rows,
            )
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
        ReportTable(
            title="Cost accounting",
            text=(
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
            columns=["stage", "seconds", "device", "status", "detail"],
            rows=stage_rows,
        )
    )
    return tables

"""`spear-mm report`: report.md and a self-contained report.html for a run folder.

Run-folder layout read here (written by `spear-mm evaluate -o RUN/eval` or the pipeline):
    RUN/eval/<model>.json   one `EvalResult` per model (or RUN/<model>.json when there is no eval/ folder)
    RUN/summary.json        optional: the `RunSummary` of `spear-mm run` (report/schema.py), read once, typed:
                            roles, choice, baselines, descriptions, costs, the Pareto front, notes and tables
    RUN/scores/scores.csv   optional: columns layer, module, score  (or scores/scores.json, read leniently)
    RUN/scores/scores.json  optional: `units` (every unit with its joint rank): the unit table and bars
Without summary.json the results that `evaluate --base/--adapted` marked (their `role`) play those roles, else
the models named 'base' and 'adapted'.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from spear_mm.errors import SpearError
from spear_mm.evaluation.metrics import EvalResult, TaskResult, compare, pareto_front, tradeoff
from spear_mm.evaluation.noise import excluded_tasks
from spear_mm.evaluation.uniform_curve import curve_from, operator_curves
from spear_mm.io.files import atomic_write_bytes, atomic_write_text
from spear_mm.report.figures import Point, layer_scores_png, tradeoff_png
from spear_mm.report.render import Block, predictions_cell, to_html, to_markdown
from spear_mm.report.run_folder import RunInfo, read_layer_scores, read_results, read_summary
from spear_mm.report.schema import ReportTable
from spear_mm.report.units import read_units, unit_table
from spear_mm.report.verdict import noise_sentence, result_warnings, verdict


@dataclass
class ReportRow:
    """One model in the report: its role, task results, R and K."""

    name: str
    role: str  # base | adapted | baseline | candidate
    tasks: dict[str, TaskResult]
    retention: float | None = None
    gain_kept: float | None = None
    retention_per_task: dict[str, float | None] = field(default_factory=dict)
    gain_kept_per_task: dict[str, float | None] = field(default_factory=dict)
    eval_seconds: float = 0.0
    cost_seconds: float | None = None
    description: str = ""
    chosen: bool = False
    on_front: bool = False


def build_rows(results: dict[str, EvalResult], info: RunInfo) -> list[ReportRow]:
    """Rows in display order (base, adapted, baselines, candidates) with R, K and the Pareto front."""
    if info.base not in results:
        raise SpearError(f"no result for the base model {info.base!r} among {sorted(results)} (set --base)")
    base, adapted = results[info.base], results.get(info.adapted)
    info.excluded = excluded_tasks(base, adapted, info.keep_chance_tasks)
    rows = []
    for name, r in results.items():
        role = {info.base: "base", info.adapted: "adapted"}.get(
            name, "baseline" if name in info.baselines else "candidate"
        )
        row = ReportRow(
            name,
            role,
            r.tasks,
            eval_seconds=r.seconds,
            cost_seconds=info.costs.get(name),
            description=info.descriptions.get(name, ""),
            chosen=name == info.chosen,
        )
        if adapted is not None:
            t = tradeoff(r, base, adapted, exclude=list(info.excluded))
            row.retention, row.gain_kept = t.retention, t.gain_kept
            row.retention_per_task, row.gain_kept_per_task = t.retention_per_task, t.gain_kept_per_task
        rows.append(row)
    merged = {r.name for r in rows if r.role in ("candidate", "baseline")}
    front = info.front if info.front is not None and merged == info.merged else None  # the run's, when it fits
    if front is None:
        front = set(pareto_front({r.name: (r.retention, r.gain_kept) for r in rows if r.name in merged}))
    for row in rows:
        row.on_front = row.name in front
    order = {"base": 0, "adapted": 1, "baseline": 2, "candidate": 3}
    return sorted(rows, key=lambda r: (order[r.role], -(r.retention or 0)))


# ---- rendering ----------------------------------------------------------------------------------------
def _f(x: float | None, digits: int = 3) -> str:
    return "undefined" if x is None else f"{x:.{digits}f}"


def _cell(tr: TaskResult | None) -> str:
    if tr is None:
        return "—"
    se = f" ± {tr.stderr:.3f}" if tr.stderr is not None else ""
    ppl = f" (ppl {tr.metrics['ppl']:.2f})" if "ppl" in tr.metrics else ""
    return f"{tr.score:.3f}{se}{ppl}"


def _tables(rows: list[ReportRow], base: ReportRow) -> list[tuple[str, list[str], list[list[str]]]]:
    tasks = list(dict.fromkeys(t for r in rows for t in r.tasks))
    head = [
        "model",
        "role",
        *[f"{t} ({base.tasks[t].metric})" if t in base.tasks else t for t in tasks],
        "R",
        "K",
        "eval s",
        "cost s",
    ]
    main = [
        [
            ("**" + r.name + "** ✓" if r.chosen else r.name),
            r.role + (" · front" if r.on_front else ""),
            *[_cell(r.tasks.get(t)) for t in tasks],
            _f(r.retention),
            _f(r.gain_kept),
            f"{r.eval_seconds:.0f}",
            "" if r.cost_seconds is None else f"{r.cost_seconds:.0f}",
        ]
        for r in rows
    ]
    per_head = [
        "model",
        *[f"R {t}" for t in base.tasks if base.tasks[t].group == "general"],
        *[f"K {t}" for t in base.tasks if base.tasks[t].group == "domain"],
    ]
    per = [
        [
            r.name,
            *[_f(r.retention_per_task.get(t)) for t in base.tasks if base.tasks[t].group == "general"],
            *[_f(r.gain_kept_per_task.get(t)) for t in base.tasks if base.tasks[t].group == "domain"],
        ]
        for r in rows
    ]
    mc = [
        [
            t,
            r.name,
            f"{tr.score:.3f}",
            "—" if tr.majority_baseline is None else f"{tr.majority_baseline:.3f}",
            predictions_cell(tr.pred_distribution, [i.lls for i in tr.items], tr.majority_baseline is not None),
        ]
        for t in tasks
        for r in rows
        if (tr := r.tasks.get(t)) is not None and tr.kind == "multiple_choice"
    ]
    return [
        ("Results", head, main),
        ("Retention and gain kept per task", per_head, per),
        (
            "Multiple choice: accuracy, majority-class baseline, predictions",
            ["task", "model", "acc", "majority", "predictions"],
            mc,
        ),
    ]


def _significance(
    rows: list[ReportRow], results: dict[str, EvalResult], info: RunInfo, against: str | None = None
) -> list[list[str]]:
    """General tasks against the base (what was lost), domain tasks against the adapted model (what was kept);
    with `against`, every model against that one on every task too."""
    out = []
    for r in rows:
        if r.role == "base" and against is None:
            continue
        for t, tr in r.tasks.items():
            ref = info.adapted if tr.group == "domain" and info.adapted in results else info.base
            refs = ([ref] if r.role != "base" else []) + ([against] if against not in (None, ref) else [])
            for other in refs:
                if r.name == other or t not in results[other].tasks:
                    continue
                try:
                    test = compare(results[r.name], results[other], t, n_resamples=2000)
                except ValueError:
                    continue
                p = "<0.001" if test.p_value < 0.001 else f"{test.p_value:.3f}"
                out.append([r.name, t, other, test.test, f"{test.diff:+.4f}", p, str(test.n)])
    return out


def render_report(
    rows: Sequence[ReportRow],
    figures: dict[str, bytes],
    *,
    title: str = "SPEAR-MM validation report",
    notes: Sequence[str] = (),
    warnings: Sequence[str] = (),
    significance: Sequence[Sequence[str]] = (),
    figure_dir: str = "report_files",
    tables: Sequence[ReportTable] = (),
    verdict_text: str = "",
    noise: str = "",
) -> tuple[str, str]:
    """Markdown (figures as files under `figure_dir`) and self-contained HTML (figures inlined as base64).

    Order: the verdict, the trade-off figure, the per-task tables; then the definitions, the paired tests,
    the run's extra tables (comparisons, cost), the predictions, the layer scores and the notes."""
    rows = list(rows)
    base = next((r for r in rows if r.role == "base"), rows[0])
    chosen = next((r for r in rows if r.chosen), None)
    if not verdict_text and chosen is not None:
        verdict_text = f"Chosen: {chosen.name} — R = {_f(chosen.retention)}, K = {_f(chosen.gain_kept)}."
    intro = [
        "R (general retention) = score_G(M) / score_G(B) per general task, then the mean. K (domain gain kept) = "
        "(D(M) − D(B)) / (D(A) − D(B)) per domain task, then the mean over tasks where it is defined; K is "
        "*undefined* when the adapted model gained nothing on a task (D(A) − D(B) ≤ 0.001). Tasks at chance level "
        "for both base and adapted are left out of R and K (see the notes).",
        "Perplexity tasks enter as exp(−NLL/token) = 1/perplexity (higher is better), so R on such a task is "
        "ppl(B)/ppl(M). Accuracies: acc (argmax log-likelihood); stderr = sqrt(p(1−p)/(n−1)). " + noise,
    ]
    blocks: list[Block] = [("h1", title), *([("p", verdict_text)] if verdict_text else [])]
    blocks += [("warn", w) for w in warnings]
    if "tradeoff" in figures:
        blocks += [("img", "tradeoff")]
    named = _tables(rows, base)
    for caption, head, body in named[:2]:
        if body:
            blocks += [("h2", caption), ("table", (head, body))]
    blocks += [("h2", "Definitions"), *[("p", s) for s in intro]]
    if significance:
        blocks += [
            ("h2", "Paired tests on the same items"),
            (
                "p",
                "General tasks against the base, domain tasks against the adapted model (and every model against "
                "the --against model, when given). McNemar (exact) for accuracy (diff = accuracy difference); "
                "paired bootstrap of NLL/token for perplexity (diff < 0: the model predicts the text better). " + noise,
            ),
            ("table", (["model", "task", "against", "test", "diff", "p", "n"], [list(s) for s in significance])),
        ]
    for t in tables:
        blocks += [("h2", t.title), *([("p", t.text)] if t.text else []), ("table", (t.columns, t.rows))]
    for caption, head, body in named[2:]:
        if body:
            blocks += [("h2", caption), ("table", (head, body))]
    if "layer_scores" in figures:
        blocks += [("h2", "Layer scores"), ("img", "layer_scores")]
    if notes:
        blocks += [("h2", "Notes"), *[("p", n) for n in notes]]
    return to_markdown(blocks, figure_dir), to_html(blocks, figures, title)


def write_report(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    base: str | None = None,
    adapted: str | None = None,
    chosen: str | None = None,
    layer_figure: Callable[[Path], bytes | None] | None = None,
    against: str | None = None,
    keep_chance_tasks: bool | None = None,
) -> tuple[Path, Path]:
    """Read the run folder, write report.md (+ report_files/*.png) and report.html; returns both paths.

    `layer_figure(run_dir) -> PNG bytes` replaces the built-in layer-score figure (read from scores/);
    `against`: also test every model against this one; `keep_chance_tasks`: keep tasks at chance level in R
    and K (default: summary.json's setting, else left out)."""

    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir
    results = read_results(run_dir)
    if not results:
        raise SpearError(f"{run_dir}: no evaluation results (expected eval/<model>.json, see docs/evaluation.md)")
    info = RunInfo.of(read_summary(run_dir))
    marked = {r.role: name for name, r in results.items() if r.role}  # evaluate --base/--adapted
    run_rk = (info.base, info.adapted, info.keep_chance_tasks)  # what the run's R, K and front were computed with
    info.base = base or (info.base if "base" in info.named else marked.get("base", info.base))
    info.adapted = adapted or (info.adapted if "adapted" in info.named else marked.get("adapted", info.adapted))
    info.chosen = chosen or info.chosen
    if keep_chance_tasks is not None:
        info.keep_chance_tasks = keep_chance_tasks
    if (info.base, info.adapted, info.keep_chance_tasks) != run_rk:
        info.front = None  # other references or tasks: other R and K, so the front is computed anew
    if against is not None and against not in results:
        raise SpearError(f"--against {against!r}: no result of that name in {run_dir} (have: {sorted(results)})")
    rows = build_rows(results, info)
    figures: dict[str, bytes] = {}
    points = [
        Point(r.name, r.retention, r.gain_kept, r.role, r.chosen)
        for r in rows
        if r.retention is not None and r.gain_kept is not None
    ]
    if points:
        rk = {r.name: (r.retention, r.gain_kept) for r in rows}
        front = [r.name for r in rows if r.on_front]
        figures["tradeoff"] = tradeoff_png(points, front, curve=curve_from(rk), operators=operator_curves(rk))
    layer_png = layer_figure(run_dir) if layer_figure else None
    units = read_units(run_dir)
    if layer_png is None and (records := read_layer_scores(run_dir)):
        layer_png = layer_scores_png(records, units=[(u.unit, u.score) for u in units if u.group != "layer"])
    if layer_png:
        figures["layer_scores"] = layer_png
    warnings = result_warnings(results)
    if info.adapted not in results:
        warnings.append(f"no result for the adapted model {info.adapted!r}: K and the trade-off plot are omitted")
    md, page = render_report(
        rows,
        figures,
        title=info.title,
        notes=[*info.notes, *(n for n in info.excluded.values() if n not in info.notes)],
        warnings=warnings,
        significance=_significance(rows, results, info, against),
        tables=[*info.tables, *([unit_table(units)] if units else [])],
        verdict_text=verdict(
            info.chosen,
            {r.name: (r.retention, r.gain_kept) for r in rows},
            results,
            info.base,
            info.excluded,
            info.choice_reason,
        ),
        noise=noise_sentence(results, info.base),
    )
    for name, png in figures.items():  # renamed into place: a link there is replaced, never written through
        atomic_write_bytes(out / "report_files" / f"{name}.png", png)
    md_path, html_path = out / "report.md", out / "report.html"
    atomic_write_text(md_path, md)
    atomic_write_text(html_path, page)
    return md_path, html_path

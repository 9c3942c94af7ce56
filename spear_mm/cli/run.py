"""`spear-mm run`: analyze → plans → merge → validate → choose → report, resumable, with progress bars."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer
from rich.table import Table

from spear_mm.cli import checks
from spear_mm.cli.choices import (
    DEVICE_METAVAR,
    DOMAIN_PROBE_OPTION,
    DOMAIN_TASKS_OPTION,
    GENERAL_PROBE_OPTION,
    GENERAL_TASKS_OPTION,
    GRANULARITY_OPTION,
    LM_EVAL_INCLUDE_OPTION,
    SUITE_OPTION,
    TASKS_OPTION,
    Backend,
    ChooseFrom,
    Executor,
    Granularity,
    RankBy,
    registered_tasks,
    value,
)
from spear_mm.cli.output import console, out_console
from spear_mm.cli.progress import LOOKS, Drawer
from spear_mm.errors import SpearError
from spear_mm.io.dtypes import DtypeName
from spear_mm.pipeline.config import RunConfig
from spear_mm.pipeline.run import run
from spear_mm.pipeline.summary import RunSummary


def _fmt(x: float | None) -> str:
    return "undefined" if x is None else f"{x:.3f}"


def results_table(summary) -> Table:
    """R, K, ΔR against the uniform curve at equal K (when one was evaluated), Pareto front, choice and cost."""
    table = Table(title=f"spear-mm run — chosen: {summary.chosen or 'none'} ({summary.choice_rule})")
    gap = {c.plan: c.delta_r for c in summary.curve_comparisons}
    columns = ("model", "kind", "R", "K", *(("ΔR vs uniform",) if gap else ()), "front", "cost s")
    for col in columns:
        table.add_column(col, justify="left" if col in ("model", "kind") else "right")
    rows = [*summary.reference.values(), *sorted(summary.candidates.values(), key=lambda e: (e.kind, e.name))]
    for e in rows:
        name = f"[bold green]{e.name} ✓[/]" if e.name == summary.chosen else e.name
        cost = "" if e.cost_seconds is None else f"{e.cost_seconds:.1f}"
        delta = "" if e.name not in gap else "—" if gap[e.name] is None else f"{gap[e.name]:+.3f}"
        table.add_row(
            name,
            e.kind,
            _fmt(e.retention),
            _fmt(e.gain_kept),
            *((delta,) if gap else ()),
            "●" if e.on_front else "",
            cost,
        )
    return table


def run_cmd(
    base: str | None = typer.Argument(None, help="Base model folder or hub id org/name(@rev); or base: in --config."),
    adapted: str | None = typer.Argument(None, help="Adapted model folder or hub id; or adapted: in --config."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (created; a re-run resumes it)."),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="A run.yaml (every option below; RUN/run.yaml of a run re-runs it). Flags win."
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder with the suites' data files."),
    suite: str | None = SUITE_OPTION,
    policies: str | None = typer.Option(
        None,
        "--policies",
        help="Comma-separated presets, 'measured' (the probe-driven planner: needs --domain-probe) and/or plan .yaml "
        "files [conservative,balanced,aggressive].",
    ),
    rank_by: RankBy | None = typer.Option(None, "--rank-by", help="Ranking the presets restore from [score]."),
    uniform_grid: str | None = typer.Option(
        None, "--uniform-grid", help="t of the uniform-SLERP curve every plan is compared with [0.1,0.2,…,0.9]."
    ),
    domain_probe: Path | None = DOMAIN_PROBE_OPTION,
    general_probe: Path | None = GENERAL_PROBE_OPTION,
    operators: str | None = typer.Option(
        None, "--operators", help="Data-aware operator curves, e.g. 'regmean=0.3,0.5,0.7' (needs --domain-probe)."
    ),
    stats_tokens: int | None = typer.Option(None, "--stats-tokens", help="operators: probe tokens per side [4096]."),
    planner_budget: int | None = typer.Option(None, "--planner-budget", help="measured: probe evaluations [30]."),
    probe_tokens: int | None = typer.Option(None, "--probe-tokens", help="measured: tokens per probe [1024]."),
    max_domain_loss: float | None = typer.Option(
        None, "--max-domain-loss", help="measured: share of the domain-probe gain the plan may lose [0.1]."
    ),
    granularity: Granularity | None = GRANULARITY_OPTION,
    sweep: str | None = typer.Option(
        None, "--sweep", help="Fractions × t grid, e.g. 'f=0.1,0.25,0.5;t=0.5,0.7,0.9' ('default' for that grid)."
    ),
    baselines: bool | None = typer.Option(
        None, "--baselines/--no-baselines", help="Uniform SLERP, task arithmetic, TIES [on]."
    ),
    target_retention: float | None = typer.Option(
        None, "--target-retention", help="Choose the most K among models with R ≥ this (e.g. 0.9)."
    ),
    choose_from: ChooseFrom | None = typer.Option(
        None, "--choose-from", help="all: plans, sweep, baselines, CPT (default); plans: SPEAR-MM plans only."
    ),
    keep_chance_tasks: bool | None = typer.Option(
        None, "--keep-chance-tasks", help="Keep tasks at chance level in R and K (default: flagged, left out)."
    ),
    limit: int | None = typer.Option(None, "--limit", help="Items per task (seeded, stratified by label)."),
    seed: int | None = typer.Option(None, help="Seed of the --limit sample [0]."),
    device: str | None = typer.Option(None, metavar=DEVICE_METAVAR, help="Where merges and evaluation run [cpu]."),
    threads: int | None = typer.Option(None, help="Torch CPU threads per evaluation (default: torch's choice)."),
    workers: int | None = typer.Option(None, "--workers", "-j", help="Executor workers (process / ray)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Items per evaluation batch [16]."),
    keep_all: bool | None = typer.Option(None, "--keep-all", help="Write every candidate to RUN/models/ (disk!)."),
    executor: Executor | None = typer.Option(None, "--executor", help="Where candidate evaluations run [local]."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="Ray cluster address (with --executor ray)."),
    cpt_cost_seconds: float | None = typer.Option(
        None, "--cpt-cost-seconds", help="Cost of one CPT run (default: ADAPTED/cost.json from spear-mm cpt)."
    ),
    title: str | None = typer.Option(None, help="Report title."),
    allow_vocab_extension: bool | None = typer.Option(
        None, help="The adapted model added vocabulary rows: shared rows are scored and merged, new rows kept."
    ),
    out_dtype: DtypeName | None = typer.Option(
        None, "--out-dtype", help="dtype of the written model(s) (default: the adapted model's)."
    ),
    backend: Backend | None = typer.Option(None, "--backend", help="Back end for the suites' items [builtin]."),
    tasks: str | None = TASKS_OPTION,
    general_tasks: str | None = GENERAL_TASKS_OPTION,
    domain_tasks: str | None = DOMAIN_TASKS_OPTION,
    lm_eval_include: Path | None = LM_EVAL_INCLUDE_OPTION,
    force: bool = typer.Option(
        False, "--force", help="-o holds another pair's run: move it aside (NAME.replaced-TIME), start afresh."
    ),
) -> None:
    """Score, plan, merge, validate and choose for one base/adapted pair; writes RUN/report.html."""
    checks.file_option("--config", config)
    for option, value_ in (
        ("--limit", limit),
        ("--threads", threads),
        ("--workers", workers),
        ("--batch-size", batch_size),
    ):
        checks.positive(option, value_)
    registered = registered_tasks(tasks, general_tasks, domain_tasks, lm_eval_include)
    lm_eval = (
        {}
        if registered is None
        else {
            "general_tasks": list(registered.general),
            "domain_tasks": list(registered.domain),
            "lm_eval_include": registered.include_path,
            "backend": "lm-eval",
            "suites": suite or "",
        }
    )
    options = (
        dict(
            base=base,
            adapted=adapted,
            out=out,
            data_dir=data_dir,
            suites=suite,
            policies=policies,
            sweep=sweep,
            baselines=baselines,
            target_retention=target_retention,
            choose_from=value(choose_from),
            keep_chance_tasks=keep_chance_tasks,
            limit=limit,
            seed=seed,
            device=device,
            threads=threads,
            workers=workers,
            batch_size=batch_size,
            keep_all=keep_all,
            executor=value(executor),
            ray_address=ray_address,
            cpt_cost_seconds=cpt_cost_seconds,
            title=title,
            allow_vocab_extension=allow_vocab_extension,
            out_dtype=value(out_dtype),
            backend=value(backend),
            rank_by=value(rank_by),
            uniform_grid=_floats(uniform_grid),
            domain_probe=domain_probe,
            general_probe=general_probe,
            operators=operators,
            stats_tokens=stats_tokens,
            planner=_given(
                budget=planner_budget,
                probe_tokens=probe_tokens,
                max_domain_loss=max_domain_loss,
                granularity=value(granularity),
            ),
        )
        | lm_eval
    )
    run_config = RunConfig.build(config, **options)
    checks.device(run_config.device)
    quiet_per_model_logs()
    with Drawer(LOOKS) as progress:
        summary = run(config=run_config, progress=progress, force=force, inputs=(config,) if config else ())
    print_summary(summary)


def _floats(text: str | None) -> list[float] | None:
    try:
        return None if text is None else [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise SpearError(f"--uniform-grid {text!r}: give comma-separated t values, e.g. 0.1,0.3,0.5,0.7,0.9.") from exc


def _given(**values):
    """Only the options given on the command line (None: the config file's or the default value holds)."""
    return {k: v for k, v in values.items() if v is not None} or None


def print_summary(summary: RunSummary) -> None:
    """The results table, cost line, skipped tasks, chosen model and report path of a finished run."""
    out_console.print(results_table(summary))
    if summary.curve_note:
        out_console.print(summary.curve_note)
    if summary.first_pick:  # the rule's pick gave way to a simpler model: say why
        out_console.print(f"choice: {summary.choice_reason}")
    if summary.excluded_tasks:
        out_console.print(f"left out of R and K (at chance level): {', '.join(summary.excluded_tasks)}")
    c = summary.cost
    ratio = f"; ratio to one CPT run {c.ratio:.3f}" if c.ratio is not None else " (no CPT cost known)"
    out_console.print(f"cost per configuration {c.per_configuration_seconds:.1f} s on {c.device}{ratio}")
    if summary.skipped_tasks:
        console.print(f"[yellow]skipped tasks (data missing):[/] {', '.join(summary.skipped_tasks)}")
    if summary.chosen_model_path:
        out_console.print(f"chosen model: {summary.chosen_model_path}")
    out_console.print(f"report: {summary.report_html}")


def quiet_per_model_logs() -> None:
    """One line per task and model, and transformers' loading bars, drown the run's bars: keep them for -v."""
    if not logging.getLogger("spear_mm").isEnabledFor(logging.DEBUG):
        logging.getLogger("spear_mm.evaluation").setLevel(logging.WARNING)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # worker processes import transformers anew


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)

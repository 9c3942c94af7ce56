"""`spear-mm run`: analyze → plans → merge → validate → choose → report, resumable, with progress bars."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from spear_mm.errors import SpearError

out_console = Console()
_LABELS = {"analyze": "score tensors", "evaluate": "evaluate models", "merge": "write chosen model (bytes)"}


def _fmt(x: float | None) -> str:
    return "undefined" if x is None else f"{x:.3f}"


def results_table(summary) -> Table:
    """R, K, Pareto front, choice and cost of every model of a run."""
    table = Table(title=f"spear-mm run — chosen: {summary.chosen or 'none'} ({summary.choice_rule})")
    for col in ("model", "kind", "R", "K", "front", "cost s"):
        table.add_column(col, justify="left" if col in ("model", "kind") else "right")
    rows = [*summary.reference.values(), *sorted(summary.candidates.values(), key=lambda e: (e.kind, e.name))]
    for e in rows:
        name = f"[bold green]{e.name} ✓[/]" if e.name == summary.chosen else e.name
        cost = "" if e.cost_seconds is None else f"{e.cost_seconds:.1f}"
        table.add_row(name, e.kind, _fmt(e.retention), _fmt(e.gain_kept), "●" if e.on_front else "", cost)
    return table


def run_cmd(
    base: Path = typer.Argument(..., help="Base model folder (before CPT)."),
    adapted: Path = typer.Argument(..., help="Adapted model folder (after CPT)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (created; a re-run resumes it)."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder with the suites' data files."),
    suite: str = typer.Option("general,domain", "--suite", "-s", help="general,domain | demo | a suite .yaml."),
    policies: str = typer.Option(
        "conservative,balanced,aggressive",
        "--policies",
        help="Comma-separated presets, 'measured' (the probe-driven planner: needs --domain-probe) and/or plan .yaml files.",
    ),
    rank_by: str = typer.Option(
        "score", "--rank-by", help="Ranking the presets restore from: score | restore_gain | activation_drift."
    ),
    uniform_grid: str = typer.Option(
        ",".join(f"{t:g}" for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)),
        "--uniform-grid",
        help="t of the uniform-SLERP curve every plan is compared with (ΔR at equal K).",
    ),
    domain_probe: Path | None = typer.Option(
        None, "--domain-probe", help="measured: held-out domain text (.txt, or .jsonl with a 'text' field)."
    ),
    general_probe: Path | None = typer.Option(
        None, "--general-probe", help="measured: general text (default: 8 texts sampled once from the base)."
    ),
    planner_budget: int = typer.Option(30, "--planner-budget", help="measured: probe evaluations for refinement."),
    probe_tokens: int = typer.Option(1024, "--probe-tokens", help="measured: tokens per probe."),
    max_domain_loss: float = typer.Option(
        0.1, "--max-domain-loss", help="measured: share of the domain-probe gain the plan may lose."
    ),
    sweep: str | None = typer.Option(
        None, "--sweep", help="Fractions × t grid, e.g. 'f=0.1,0.25,0.5;t=0.5,0.7,0.9' ('default' for that grid)."
    ),
    no_baselines: bool = typer.Option(False, "--no-baselines", help="Skip uniform SLERP, task arithmetic, TIES."),
    target_retention: float | None = typer.Option(
        None, "--target-retention", help="Choose the most K among models with R ≥ this (e.g. 0.9)."
    ),
    choose_from: str = typer.Option("all", "--choose-from", help="all (plans, sweep, baselines, CPT) | plans."),
    limit: int | None = typer.Option(None, "--limit", help="Items per task (seeded, stratified by label)."),
    seed: int = typer.Option(0, help="Seed of the --limit sample."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    threads: int | None = typer.Option(None, help="Torch CPU threads per evaluation (default: torch's choice)."),
    workers: int | None = typer.Option(None, "--workers", "-j", help="Executor workers (process / ray)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Items per evaluation batch."),
    keep_all: bool = typer.Option(False, "--keep-all", help="Write every candidate to RUN/models/ (disk!)."),
    executor: str = typer.Option("local", "--executor", help="local | process | ray."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="Ray cluster address (with --executor ray)."),
    cpt_cost_seconds: float | None = typer.Option(
        None, "--cpt-cost-seconds", help="Cost of one CPT run (default: ADAPTED/cost.json from spear-mm cpt)."
    ),
    title: str | None = typer.Option(None, help="Report title."),
) -> None:
    """Score, plan, merge, validate and choose for one base/adapted pair; writes RUN/report.html."""
    from spear_mm.cli import console
    from spear_mm.pipeline import run

    _quiet_per_model_logs()
    if executor not in ("local", "process", "ray"):
        raise SpearError(f"--executor {executor!r}: use local, process or ray.")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=False) as bars:
        ids: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            key, label = ("items", "  " + stage.removeprefix("items ")) if stage.startswith("items ") else (stage, "")
            if key not in ids:
                ids[key] = bars.add_task(_LABELS.get(key, label or key), total=total)
            bars.update(ids[key], completed=done, total=total, **({"description": label} if label else {}))

        summary = run(
            base,
            adapted,
            out,
            suites=suite,
            data_dir=data_dir,
            policies=tuple(p.strip() for p in policies.split(",") if p.strip()),
            sweep=sweep,
            baselines=not no_baselines,
            target_retention=target_retention,
            choose_from=choose_from,
            limit=limit,
            seed=seed,
            device=device,
            threads=threads,
            workers=workers,
            batch_size=batch_size,
            keep_all=keep_all,
            executor=executor,
            ray_address=ray_address,
            cpt_cost_seconds=cpt_cost_seconds,
            title=title,
            rank_by=rank_by,
            uniform_grid=_grid(uniform_grid),
            domain_probe=domain_probe,
            general_probe=general_probe,
            planner={
                "budget": planner_budget,
                "max_domain_loss": max_domain_loss,
                "target_retention": target_retention,
                "probe_tokens": probe_tokens,
            },
            progress=progress,
        )
    out_console.print(results_table(summary))
    c = summary.cost
    ratio = f"; ratio to one CPT run {c.ratio:.3f}" if c.ratio is not None else " (no CPT cost known)"
    out_console.print(f"cost per configuration {c.per_configuration_seconds:.1f} s on {c.device}{ratio}")
    if summary.skipped_tasks:
        console.print(f"[yellow]skipped tasks (data missing):[/] {', '.join(summary.skipped_tasks)}")
    if summary.chosen_model_path:
        out_console.print(f"chosen model: {summary.chosen_model_path}")
    out_console.print(f"report: {summary.report_html}")


def _grid(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError as exc:
        raise SpearError(f"--uniform-grid must be comma-separated numbers in (0, 1), got {text!r}.") from exc


def _quiet_per_model_logs() -> None:
    """One line per task and model, and transformers' loading bars, drown the run's bars: keep them for -v."""
    import logging

    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("spear_mm.evaluation").setLevel(logging.WARNING)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)

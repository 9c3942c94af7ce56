"""`spear-mm run`: analyze → plans → merge → validate → choose → report, resumable, with progress bars."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

import spear_mm
from spear_mm.cli.config_options import (
    CONTEXT,
    aliases,
    model_flags,
    option,
    overrides,
    parameters,
    typed,
    with_signature,
)
from spear_mm.cli.output import console, out_console
from spear_mm.cli.progress import LOOKS, Drawer
from spear_mm.pipeline.config import RunConfig
from spear_mm.report.schema import RunSummary


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


# Old spellings of planner flags on `run`, kept hidden so scripts keep working (`plan` accepts the same).
_RUN_ALIASES = {
    "--probe-tokens": "--planner-probe-tokens",
    "--max-domain-loss": "--planner-max-domain-loss",
    "--granularity": "--planner-granularity",
}
RUN_FLAGS = model_flags(RunConfig)
_ALL_FLAGS = RUN_FLAGS + aliases(RUN_FLAGS, _RUN_ALIASES)
# Options of the command that are not config fields: the config file itself, --tasks (more general_tasks), --force
_EXTRA = [
    option(
        "config",
        Path | None,
        None,
        "--config",
        "-c",
        panel="Inputs",
        help="A run.yaml (every option below; RUN/run.yaml of a run re-runs it). Flags win.",
    ),
    option(
        "tasks",
        str | None,
        None,
        "--tasks",
        panel="Evaluation",
        help="Registered lm-eval tasks counted in R, e.g. arc_easy,hellaswag (more --general-tasks; imply "
        "--backend lm-eval and, without --suite, no suite).",
    ),
    option(
        "force",
        bool,
        False,
        "--force",
        panel="Output",
        help="-o holds another pair's run: move it aside (NAME.replaced-TIME), start afresh.",
    ),
]
EXAMPLES = (
    "Examples:\n\n"
    "spear-mm run base/ adapted/ -o runs/fin --data-dir data/ --target-retention 0.9  "
    "(presets, sweep and baselines; the most K among R ≥ 0.9)\n\n"
    "spear-mm run -c runs/fin/run.yaml --policies measured --domain-probe held_out.txt --planner-budget 8  "
    "(a run's resolved config, re-run with the measured planner)"
)


def run_cmd(ctx: typer.Context, **values: Any) -> None:
    """Score, plan, merge, validate and choose for one base/adapted pair; writes RUN/report.html.

    Every option is a field of the run config (run.yaml, `spear_mm.pipeline.config.RunConfig`); flags win over
    --config. The pipeline (and torch) load through `spear_mm.run` once the config is valid, so a mistake in the
    options is refused at once; the file and device checks are the pipeline's, before any work.
    """
    config, force = values.pop("config", None), values.pop("force", False)
    run_config = resolve(config, typed(ctx, values))
    quiet_per_model_logs()
    with Drawer(LOOKS) as progress:
        summary = spear_mm.run(config=run_config, progress=progress, force=force, inputs=(config,) if config else ())
    print_summary(summary)


with_signature(run_cmd, [CONTEXT, *_EXTRA[:1], *parameters(_ALL_FLAGS), *_EXTRA[1:]])


def resolve(config: Path | None, values: dict[str, Any]) -> RunConfig:
    """The `RunConfig` of a command line: the --config file, then the flags typed (`values`: parameter -> value).
    Task names on the command line imply `--backend lm-eval` and, without --suite, no suite."""
    given = overrides(_ALL_FLAGS, values)
    tasks = [t for t in (values.get("tasks"), given.get("general_tasks")) if t]
    if tasks:
        given["general_tasks"] = ",".join(tasks)
    if tasks or given.get("domain_tasks"):
        given.setdefault("suites", "")
        given.setdefault("backend", "lm-eval")
    return RunConfig.build(config, **given)


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
    app.command("run", epilog=EXAMPLES)(run_cmd)

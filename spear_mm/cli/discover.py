"""`spear-mm ls suites|tasks|policies|methods|refinements|architectures` and `spear-mm plan validate PLAN MODEL`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from spear_mm.cli.choices import Listing
from spear_mm.cli.output import out_console
from spear_mm.evaluation.lm_eval_tasks import SHIPPED_EQUIVALENTS
from spear_mm.evaluation.suites import SUITES, get_suite
from spear_mm.io.architecture import _table
from spear_mm.io.checkpoint import Checkpoint
from spear_mm.measured.objective import REFINEMENTS
from spear_mm.merging.methods import METHODS
from spear_mm.planning.check import validate_plan
from spear_mm.planning.plan import Plan
from spear_mm.planning.policies import POLICY_RULES


def _suites() -> Table:

    table = Table(title="shipped suites (--suite NAME; or a suite .yaml)")
    for col in ("suite", "tasks", "groups"):
        table.add_column(col)
    for name in SUITES:
        suite = get_suite(name)
        groups = sorted({t.group for t in suite.tasks})
        table.add_row(name, ", ".join(t.name for t in suite.tasks), ", ".join(groups))
    return table


def _tasks() -> Table:

    table = Table(
        title="tasks of the shipped suites (data under --data-dir unless embedded; `lm_eval ls tasks` for lm-eval's)"
    )
    for col in ("task", "suite", "group", "kind", "metric", "data", "lm-eval counterpart"):
        table.add_column(col)
    for name in SUITES:
        for t in get_suite(name).tasks:
            data = t.path or ""
            data = "embedded" if "_data" in data else data
            lm_eval = SHIPPED_EQUIVALENTS.get(t.name, "")
            table.add_row(t.name, name, t.group, t.kind, t.primary_metric, data, lm_eval)
    return table


def _policies() -> Table:

    table = Table(
        title="plan policies (spear-mm plan --policy; spear-mm run --policies). Units: the layers, the "
        "embeddings, the head and the final norm, ranked together (--rank-by)"
    )
    for col in ("policy", "what it restores"):
        table.add_column(col)
    for rule in POLICY_RULES.values():  # registered: planning/policies.py, `measured` by measured/planner.py
        table.add_row(rule.name, rule.summary)
    return table


def _methods() -> Table:
    table = Table(title="merge methods (a plan's `method`; spear-mm plan --method; registered in merging/methods/)")
    for col in ("method", "what it computes (t = weight of the base)", "options", "stats", "mergekit"):
        table.add_column(col)
    for name, cls in METHODS.items():
        stats = "yes" if cls.needs_statistics else ""
        table.add_row(name, cls.summary, ", ".join(cls.options), stats, cls.mergekit or "")
    return table


def _refinements() -> Table:
    table = Table(
        title="measured-planner refinements (`refine:` of the planner options; registered in measured/search.py)"
    )
    table.add_column("refine")
    table.add_column("what the optuna search varies")
    for name, search in REFINEMENTS.items():
        table.add_row(name, " ".join((search.__doc__ or "").split("\n\n")[0].split()))  # its docstring's summary
    return table


def _architectures() -> Table:

    table = Table(title="architecture families (spear_mm/_data/architectures.json; others: generic rules)")
    for col in ("family", "model_type values", "module types"):
        table.add_column(col)
    for family, spec in _table()["families"].items():
        modules = sorted(set(spec["modules"].values()))
        table.add_row(family, ", ".join(spec["model_types"]), ", ".join(modules))
    return table


def ls_cmd(what: Listing = typer.Argument(..., help="What to list.")) -> None:
    """List the shipped suites, their tasks, the plan policies, the merge methods, the measured planner's
    refinements or the known architectures."""
    builders = {
        Listing.suites: _suites,
        Listing.tasks: _tasks,
        Listing.policies: _policies,
        Listing.methods: _methods,
        Listing.refinements: _refinements,
        Listing.architectures: _architectures,
    }
    out_console.print(builders[Listing(what)]())


def plan_validate_cmd(
    plan: Path = typer.Argument(..., help="Plan YAML (spear-mm plan)."),
    model: Path = typer.Argument(..., help="A model folder or hub id the plan is for (base or adapted)."),
) -> None:
    """Check PLAN against MODEL's tensor names (layers, module overrides) without merging; `spear-mm plan validate`."""

    the_plan = Plan.load(plan)
    check = validate_plan(the_plan, Checkpoint.open(model), source=str(plan))
    table = Table(title=f"plan {plan} on {check.model}: {the_plan.summary()}")
    for col in ("group", "keep", "merge", "base"):
        table.add_column(col, justify="left" if col == "group" else "right")
    for group in sorted({g for g, _ in check.actions}):
        table.add_row(group, *(str(check.actions[(group, a)]) for a in ("keep", "merge", "base")))
    out_console.print(table)
    notes = list(check.notes)
    if the_plan.needs_statistics() and not the_plan.statistics:
        methods = ", ".join(m for m in the_plan.methods() if METHODS[m].needs_statistics)
        notes.append(
            f"{methods} read(s) probe statistics: merge it with --stats STATS (spear-mm stats) or add "
            "statistics: STATS to the plan"
        )
    for note in notes:
        out_console.print(f"note: {note}")
    out_console.print(f"plan OK: {check.tensors} tensors, {check.num_layers} layers; nothing was merged or written.")


def register(app: typer.Typer) -> None:
    app.command("ls")(ls_cmd)
    app.command("plan-validate", hidden=True)(plan_validate_cmd)

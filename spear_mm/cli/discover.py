"""`spear-mm ls suites|tasks|policies|methods|architectures` and `spear-mm plan validate PLAN MODEL`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from spear_mm.cli.choices import Listing, Policy
from spear_mm.cli.output import out_console
from spear_mm.evaluation.lm_eval_tasks import SHIPPED_EQUIVALENTS
from spear_mm.evaluation.suites import SUITES, get_suite
from spear_mm.io.architecture import _table
from spear_mm.io.checkpoint import Checkpoint
from spear_mm.planning.check import validate_plan
from spear_mm.planning.plan import Method, Plan
from spear_mm.planning.policies import AGGRESSIVE_TOP_FRACTION, AGGRESSIVE_TOP_T, PRESETS

_METHODS = {
    "slerp": "spherical interpolation per tensor toward the base (LERP when |cos| > 0.9995); the default",
    "lerp": "linear interpolation (1 - t)·adapted + t·base",
    "task_arithmetic": "base + (1 - t)·Δ, with Δ = adapted - base",
    "ties": "Δ trimmed to its largest `density` share of entries, added back with weight 1 - t",
    "regmean": "per linear layer, least squares: base outputs on general-probe inputs, adapted outputs on domain-probe "
    "inputs, weighted t : 1 - t (needs spear-mm stats); other tensors SLERP",
    "fisher": "per parameter, base and adapted weighted by t·Fisher(general) : (1 - t)·Fisher(domain) (needs spear-mm "
    "stats --kinds fisher)",
}


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
    rules = {
        "uniform": "every unit at --t",
        "custom": "one t per layer from --layers (--embed/--head/--final-norm for the other units)",
        "top-k": "the --k highest-ranked units at --t",
        "fraction": "the top --fraction of units at --t",
        "measured": "a t per unit chosen from measured probe effects (--domain-probe; the measured planner)",
    }
    for name in (p.value for p in Policy):
        if name in PRESETS:
            fraction, t = PRESETS[name]
            extra = f"; the top {AGGRESSIVE_TOP_FRACTION:.0%} at t={AGGRESSIVE_TOP_T}" if name == "aggressive" else ""
            table.add_row(name, f"the top {fraction:.0%} units of the ranking at t={t}{extra}")
        else:
            table.add_row(name, rules[name])
    return table


def _methods() -> Table:
    from typing import get_args

    table = Table(title="merge methods (a plan's `method`; spear-mm plan --method)")
    table.add_column("method")
    table.add_column("what it computes (t = weight of the base)")
    for name in get_args(Method):
        table.add_row(name, _METHODS.get(name, ""))
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
    """List the shipped suites, their tasks, the plan policies, the merge methods or the known architectures."""
    builders = {
        Listing.suites: _suites,
        Listing.tasks: _tasks,
        Listing.policies: _policies,
        Listing.methods: _methods,
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
    for note in check.notes:
        out_console.print(f"note: {note}")
    out_console.print(f"plan OK: {check.tensors} tensors, {check.num_layers} layers; nothing was merged or written.")


def register(app: typer.Typer) -> None:
    app.command("ls")(ls_cmd)
    app.command("plan-validate", hidden=True)(plan_validate_cmd)

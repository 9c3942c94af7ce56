"""`spear-mm plan --policy measured`: the CLI side of the measured planner (spear_mm.measured.planner)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.panel import Panel

from spear_mm.cli.config_options import aliases, flag_problem, model_flags, overrides
from spear_mm.cli.progress import LOOKS, Drawer
from spear_mm.errors import SpearError
from spear_mm.io.pair import open_pair
from spear_mm.measured.objective import PlannerOptions
from spear_mm.measured.planner import general_probe_for, measured_plan
from spear_mm.merging.methods import METHODS
from spear_mm.planning.policies import check_options
from spear_mm.scoring.probes import read_texts

# `plan`'s planner flags: generated from PlannerOptions (the fields `run` exposes too, same spelling); the old
# spellings stay as hidden aliases, --target-retention (now --planner-probe-recovery) with a warning
PANEL = "Measured planner (--policy measured)"
_FLAGS = model_flags(PlannerOptions, prefix="planner", panel=PANEL)
PLANNER_FLAGS = _FLAGS + aliases(
    _FLAGS,
    {
        "--budget": "--planner-budget",
        "--max-domain-loss": "--planner-max-domain-loss",
        "--probe-tokens": "--planner-probe-tokens",
        "--probe-units": "--planner-probe-units",
        "--granularity": "--planner-granularity",
        "--target-retention": "--planner-probe-recovery",
    },
)
DEPRECATED = {
    "--target-retention": "plan --target-retention is now --planner-probe-recovery (the share of the general-probe "
    "damage to recover; run's --target-retention chooses among evaluated models by R). The old spelling will go."
}
DOMAIN_PROBE_OPTION: Any = typer.Option(
    None, "--domain-probe", help="Held-out domain text (.txt, or .jsonl with a 'text' field).", rich_help_panel=PANEL
)
GENERAL_PROBE_OPTION: Any = typer.Option(
    None, "--general-probe", help="General text (default: 8 texts sampled once from the base).", rich_help_panel=PANEL
)
# `plan` flags read only by --policy measured, and those it does not read (the rule-based policies')
MEASURED_FLAGS = ("--domain-probe", "--general-probe", *(f.spelling for f in PLANNER_FLAGS))
RULE_FLAGS = {
    "fraction": "--fraction",
    "t": "--t",
    "k": "--k",
    "layer_ts": "--layers",
    "embed": "--embed",
    "head": "--head",
    "final_norm": "--final-norm",
}


def refuse_ignored(policy: str, given: dict[str, object]) -> None:
    """Refuse `plan` options (`given`: flag -> value, None when not given) that `policy` would ignore."""
    if policy == "measured":
        ignored = [f for f in RULE_FLAGS.values() if given.get(f) is not None]
        why = "the measured planner chooses every unit's t from the probes"
    else:
        ignored = [f for f in MEASURED_FLAGS if given.get(f) is not None]
        why = "they are read only by --policy measured"
        check_options(
            policy,
            {k: given.get(f) for k, f in RULE_FLAGS.items() if k in ("fraction", "t", "k", "layer_ts")},
            flag=RULE_FLAGS,
        )
    if ignored:
        raise SpearError(f"--policy {policy} does not use {', '.join(ignored)} ({why}); drop them or change --policy.")


def planner_options(given: dict[str, Any]) -> PlannerOptions:
    """The planner's options from the `--planner-…` flags typed (`given`: parameter -> value)."""
    try:
        return PlannerOptions(**overrides(PLANNER_FLAGS, given, DEPRECATED))
    except ValidationError as exc:
        raise SpearError(flag_problem(PLANNER_FLAGS, given, exc)) from exc


def measured_from_cli(
    table,
    base,
    adapted,
    out: Path,
    domain_probe,
    general_probe,
    options: PlannerOptions,
    rank_by: str,
    method: str,
    statistics: Path | None = None,
):
    """Open the pair (the scored folders unless --base/--adapted), sample the general probe when none is
    given, and run the planner with its probe cache beside the plan (`<plan>.probes/`)."""
    if domain_probe is None:
        raise SpearError(
            "--policy measured needs --domain-probe FILE: held-out domain text (a slice of the CPT corpus the "
            "model was not trained on, .txt or .jsonl with a 'text' field), to measure what restoring costs."
        )
    for path in (domain_probe, general_probe):
        if path is not None:
            read_texts(path)  # UTF-8 text, not blank: before the pair is opened and the base sampled
    if method != "slerp" and not METHODS[method].needs_statistics:
        operators = ", ".join(n for n, m in METHODS.items() if m.needs_statistics)
        raise SpearError(f"--policy measured searches SLERP, or SLERP and an operator ({operators}), not {method}.")
    if METHODS[method].needs_statistics and statistics is None:
        raise SpearError(f"--policy measured --method {method} needs --stats STATS (spear-mm stats).")
    pair = open_pair(base or table.base, adapted or table.adapted)
    cache = out.with_name(out.name + ".probes")
    with Drawer(LOOKS, transient=True) as progress:
        general = general_probe or general_probe_for(pair, cache)
        return measured_plan(
            table,
            pair,
            general,
            domain_probe,
            options.planner_config(),
            rank_by=rank_by,
            cache_path=cache / "evaluations.jsonl",
            probe_tokens=options.probe_tokens,
            method=method,
            statistics=statistics,
            progress=progress,
        )


def measurement_panel(plan) -> Panel:
    """Probe NLLs of base, adapted and the plan, the objective and what the planner spent."""
    m = plan.measurement
    g, d = m.nll_general, m.nll_domain
    lines = [
        f"objective: {m.objective}",
        f"general probe ({m.general_tokens} tokens, {m.general_probe}): NLL base {g['base']:.4f}, adapted "
        f"{g['adapted']:.4f}, plan {g['plan']:.4f}",
        f"domain probe ({m.domain_tokens} tokens, {m.domain_probe}): NLL base {d['base']:.4f}, adapted "
        f"{d['adapted']:.4f}, plan {d['plan']:.4f}",
        f"probe evaluations: {m.evaluations} run + {m.cached} from the cache (refinement budget {m.budget}); "
        f"{m.seconds:.1f} s",
        "knapsack plan before refinement: " + (", ".join(f"{u}={t:g}" for u, t in m.greedy.items()) or "keep all"),
    ]
    return Panel("\n".join(lines), title="measured planner", border_style="cyan")

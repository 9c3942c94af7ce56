"""The measured planner's black-box refinement: optuna's constrained TPE over per-group or per-unit t.

`refine_groups` searches one t per group of units — a few dimensions at any depth, the uniform plans included:
efficiency tiers (`refine: tiers`, the default: units ordered by measured efficiency, cut into `tiers` groups) or
unit kinds (`refine: kinds`: attention, MLP, embeddings, final norm). `refine_units` searches the t of single
promising units. All keep their start as a candidate and return the best feasible plan (`pick`).

Each `refine` choice is one function registered with `@register_refinement(name)`, called as
`search(obj, effects, order, start, config, run)`; `PlannerConfig.refine` accepts the registered names.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from spear_mm.measured.objective import Objective, PlannerConfig, register_refinement
from spear_mm.planning.plan import UnitEffect

if TYPE_CHECKING:  # annotations only: the probe module loads torch and transformers
    from spear_mm.measured.probe import ProbeResult


def refine_units(obj: Objective, effects, start: tuple[dict, ProbeResult], config: PlannerConfig, run):
    """optuna TPE (with constraint) over the t of the most promising units, seeded with the start plan; the
    start itself stays a candidate, so the refinement never returns a worse plan."""
    best_gain: dict[str, float] = {}
    for e in effects:
        best_gain[e.unit] = max(best_gain.get(e.unit, -math.inf), e.general_recovered)
    promising = sorted(best_gain, key=lambda u: -best_gain[u])
    ts0 = start[0]
    search = list(dict.fromkeys([*ts0, *promising]))[: max(config.refine_units, len(ts0))]
    fixed = {u: t for u, t in ts0.items() if u not in search}
    results: dict[int, tuple[dict, ProbeResult]] = {-1: start}

    def objective(trial) -> float:
        ts = dict(fixed)
        for u in search:
            t = round(trial.suggest_float(u, 0.0, 1.0, step=config.t_step), 6)
            if t > 0:
                ts[u] = t
        r = run(ts)
        results[trial.number] = (ts, r)
        return _constrained(trial, obj, r)

    study = _study(config)
    study.enqueue_trial({u: on_grid(ts0.get(u, 0.0), config.t_step) for u in search})
    study.optimize(objective, n_trials=config.budget)
    return pick(results, obj, config.tolerance)


def _study(config: PlannerConfig):
    """A maximising optuna study with a constrained multivariate TPE sampler (optuna ≥ 5: `set_constraint`)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    old_api = {} if _has_set_constraint(optuna) else {"constraints_func": lambda t: [t.user_attrs["violation"]]}
    sampler = optuna.samplers.TPESampler(
        seed=config.seed, multivariate=True, n_startup_trials=max(2, min(10, config.budget // 3)), **old_api
    )
    return optuna.create_study(direction="maximize", sampler=sampler)


def _has_set_constraint(optuna) -> bool:
    return hasattr(optuna.trial.Trial, "set_constraint")


def _constrained(trial, obj: Objective, r: ProbeResult) -> float:
    """Record the trial's constraint (≤ 0 feasible) and return its objective value."""
    import optuna

    trial.set_user_attr("violation", obj.violation(r))
    if _has_set_constraint(optuna):
        trial.set_constraint("domain" if obj.mode == "keep" else "retention", obj.violation(r))
    return obj.value(r)


def efficiency_order(effects: list[UnitEffect], order: list[str]) -> list[str]:
    """Units by their best measured efficiency: free recoveries first (largest first), then recovered general NLL
    per domain NLL lost; units that recover nothing, then unmeasured units (ranking order), last."""
    best: dict[str, tuple[float, float]] = {}
    for e in effects:
        if e.general_recovered <= 0:
            key = (-math.inf, e.general_recovered)
        elif e.domain_lost <= 0:
            key = (math.inf, e.general_recovered)
        else:
            key = (e.general_recovered / e.domain_lost, e.general_recovered)
        best[e.unit] = max(best.get(e.unit, key), key)
    rank = {u: i for i, u in enumerate(order)}
    measured = sorted(best, key=lambda u: (-best[u][0], -best[u][1], rank.get(u, len(rank))))
    return measured + [u for u in order if u not in best]


def tiers_of(ranked: list[str], k: int) -> dict[str, list[str]]:
    """`ranked` cut into k contiguous tiers of (nearly) equal size: {'tier0': [...], …}."""
    out: dict[str, list[str]] = {f"tier{i}": [] for i in range(k)}
    for i, u in enumerate(ranked):
        out[f"tier{min(i * k // len(ranked), k - 1)}"].append(u)
    return out


def kind_of(unit: str) -> str:
    """The kind of a unit id: 'attn' / 'mlp' for sub-layers, 'layer' for whole layers, else the unit itself."""
    if unit.startswith("layer."):
        parts = unit.split(".")
        return parts[2] if len(parts) > 2 else "layer"
    return unit


def kinds_of(units: list[str]) -> dict[str, list[str]]:
    """Units grouped by kind (attention, MLP, layer, embed, head, final_norm, other), in order of appearance."""
    out: dict[str, list[str]] = {}
    for u in units:
        out.setdefault(kind_of(u), []).append(u)
    return out


def group_ts(groups: dict[str, list[str]], ts: dict[str, float]) -> dict[str, float]:
    """Every unit's t from its group's t (zeros left out)."""
    return {u: ts[g] for g, units in groups.items() for u in units if ts[g] > 0}


def refine_groups(
    obj: Objective, groups: dict[str, list[str]], start: tuple[dict, ProbeResult], config: PlannerConfig, run
):
    """optuna TPE (with constraint) over one t per group of units, seeded with the start's mean t per group;
    the uniform plans are in the space (all groups equal) and the start itself stays a candidate, so the
    refinement never returns a worse plan. Groups: efficiency tiers (`refine: tiers`) or unit kinds
    (`refine: kinds`: attention, MLP, embeddings, final norm — one t per kind)."""
    results: dict[int, tuple[dict, ProbeResult]] = {-1: start}

    def objective(trial) -> float:
        plan = group_ts(groups, {g: round(trial.suggest_float(g, 0.0, 1.0, step=config.t_step), 6) for g in groups})
        r = run(plan)
        results[trial.number] = (plan, r)
        return _constrained(trial, obj, r)

    study = _study(config)
    seed = {g: sum(start[0].get(u, 0.0) for u in units) / max(len(units), 1) for g, units in groups.items()}
    study.enqueue_trial({g: on_grid(t, config.t_step) for g, t in seed.items()})
    study.optimize(objective, n_trials=config.budget)
    return pick(results, obj, config.tolerance)


def pick(results: dict[int, tuple[dict, ProbeResult]], obj: Objective, tolerance: float):
    """The best feasible plan; among plans within `tolerance` of the best value, the one that restores least
    (smallest Σt: probe noise should not buy restorations), then the earliest. Infeasible only when no plan is
    feasible (then the least violating)."""
    feasible = [n for n, (_, r) in results.items() if obj.violation(r) <= 0]
    if not feasible:
        n = max(results, key=lambda n: (-obj.violation(results[n][1]), -n))
        return results[n]
    best = max(obj.value(results[n][1]) for n in feasible)
    close = [n for n in feasible if obj.value(results[n][1]) >= best - tolerance]
    n = min(close, key=lambda n: (sum(results[n][0].values()), n))
    return results[n]


def on_grid(t: float, step: float) -> float:
    return min(1.0, round(round(t / step) * step, 10))


@register_refinement("tiers")
def by_tiers(obj: Objective, effects: list[UnitEffect], order: list[str], start, config: PlannerConfig, run):
    """One t per efficiency tier (units ordered by measured efficiency, cut into `tiers` groups); the default."""
    return refine_groups(obj, tiers_of(efficiency_order(effects, order), config.tiers), start, config, run)


@register_refinement("kinds")
def by_kinds(obj: Objective, effects: list[UnitEffect], order: list[str], start, config: PlannerConfig, run):
    """One t per unit kind (attention, MLP, embeddings, final norm)."""
    return refine_groups(obj, kinds_of(efficiency_order(effects, order)), start, config, run)


@register_refinement("units")
def by_units(obj: Objective, effects: list[UnitEffect], order: list[str], start, config: PlannerConfig, run):
    """The t of the `refine_units` most promising single units."""
    return refine_units(obj, effects, start, config, run)

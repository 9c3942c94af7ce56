"""The measured planner's black-box refinement: optuna's constrained TPE over per-tier or per-unit t.

`refine_tiers` (the default) orders the units by measured efficiency and searches one t per tier — a few
dimensions at any depth, the uniform plans included; `refine_units` searches the t of single promising units.
Both keep their start as a candidate and return the best feasible plan (`pick`).
"""

from __future__ import annotations

import math

from spear_mm.calibration.objective import Objective, PlannerConfig
from spear_mm.calibration.probe import ProbeResult
from spear_mm.planning.plan import UnitEffect


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


def _tier(i: int, k: int, n: int) -> int:
    """The tier (0 … k−1) of the i-th of n ranked units: k contiguous tiers of (nearly) equal size."""
    return min(i * k // n, k - 1)


def tier_ts(ranked: list[str], ts: list[float]) -> dict[str, float]:
    """Every unit's t when `ranked` is cut into len(ts) tiers (unit t = its tier's t; zeros left out)."""
    k, n = len(ts), len(ranked)
    return {u: ts[_tier(i, k, n)] for i, u in enumerate(ranked) if ts[_tier(i, k, n)] > 0}


def refine_tiers(obj: Objective, ranked: list[str], start: tuple[dict, ProbeResult], config: PlannerConfig, run):
    """optuna TPE (with constraint) over one t per efficiency tier, seeded with the start's mean t per tier;
    the start itself stays a candidate, so the refinement never returns a worse plan."""
    names = [f"tier{i}" for i in range(config.tiers)]
    results: dict[int, tuple[dict, ProbeResult]] = {-1: start}

    def objective(trial) -> float:
        plan = tier_ts(ranked, [round(trial.suggest_float(n, 0.0, 1.0, step=config.t_step), 6) for n in names])
        r = run(plan)
        results[trial.number] = (plan, r)
        return _constrained(trial, obj, r)

    k, n = config.tiers, len(ranked)
    sums, counts = [0.0] * k, [0] * k
    for i, u in enumerate(ranked):
        sums[_tier(i, k, n)] += start[0].get(u, 0.0)
        counts[_tier(i, k, n)] += 1
    study = _study(config)
    study.enqueue_trial({nm: on_grid(sums[i] / max(counts[i], 1), config.t_step) for i, nm in enumerate(names)})
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

"""The measured planner (`--policy measured`): choose every unit's t from its measured effect on two probes.

1. Measure: for each unit (in the order of the weight-only ranking, optionally only its top N), restore it
   alone at t = `t_mid` and t = 1, in memory; record the general-probe NLL it recovers and the domain-probe
   NLL it costs (spear_mm.measured.probe).
2. Knapsack: take the (unit, t) options by recovered NLL per unit of domain NLL spent (free options first,
   ties in ranking order) while the predicted domain loss stays within the allowance; evaluate the result and,
   when the real plan breaks the constraint (effects are not additive), keep the longest feasible prefix of the
   options taken (binary search: a few evaluations).
3. Start: the best feasible of the knapsack plan and a few uniform plans (`uniform_seeds`; where many units
   interact, e.g. an overshooting CPT, a uniform t beats any sum of single-unit effects).
4. Refine: optuna's TPE sampler with a constraint searches for `budget` probe evaluations; the best feasible
   plan (starts included) wins. `refine="tiers"` (default): the units, ordered by measured efficiency (general
   NLL recovered per domain NLL lost, free ones first), are cut into `tiers` groups and one t per group is
   searched — a few dimensions whatever the model's depth, the uniform plans among them (all tiers equal), so
   the refinement looks exactly where a selective plan can beat uniform SLERP: more restoration where it is
   cheap. `refine="kinds"`: one t per unit kind (attention, MLP — with `granularity="sublayer"` —, embeddings,
   final norm). `refine="units"`: the t of the `refine_units` most promising single units, from the best start.

Objectives on the probes (G = general NLL, D = domain NLL; B base, A adapted):
- `keep` (default): maximise r = (G_A − G)/(G_A − G_B), the share of the general damage recovered, subject to
  D ≤ D_A + max_domain_loss · max(D_B − D_A, 0), i.e. losing at most that share of the probe's domain gain;
- `target` (`probe_recovery`): reach r ≥ target and keep the most domain (minimise D).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field

from spear_mm.measured.objective import PROBE_TOKENS, REFINEMENTS, Objective, PlannerConfig
from spear_mm.measured.probe import ProbeEvaluator, ProbeResult, load_probes
from spear_mm.measured.samples import SAMPLE_SEED, sample_base_text
from spear_mm.measured.search import pick
from spear_mm.planning.plan import Measurement, UnitEffect
from spear_mm.planning.policies import plan_from_unit_ts, register_policy
from spear_mm.progress import ProgressCallback
from spear_mm.scoring.units import split_layers

__all__ = ["Objective", "PlannerConfig", "PlannerResult", "Trace", "measured_plan", "plan_units"]

log = logging.getLogger(__name__)


register_policy("measured", "a t per unit chosen from measured probe effects (--domain-probe; the measured planner)")(
    None
)  # planned by measured_plan below, not by make_plan


@dataclass
class Trace:
    """One probe evaluation of a whole plan: for the bench's evaluations-to-target curve."""

    evaluations: int  # probe evaluations spent so far (measurement included)
    seconds: float
    value: float  # the objective (r in keep mode, domain kept in target mode)
    feasible: bool


@dataclass
class PlannerResult:
    ts: dict[str, float]  # every unit's t
    greedy: dict[str, float]
    result: ProbeResult
    value: float
    feasible: bool
    refs: dict[str, ProbeResult]  # base, adapted
    effects: list[UnitEffect]
    trace: list[Trace] = field(default_factory=list)
    objective: str = ""
    seconds: float = 0.0
    start: str = "knapsack"  # the starting plan the refinement began from


def measure_effects(ev: ProbeEvaluator, units: list[str], t_mid: float, adapted: ProbeResult) -> list[UnitEffect]:
    """Each unit restored alone at t_mid and at 1: general NLL recovered, domain NLL lost."""
    out = []
    for unit in units:
        for t in (t_mid, 1.0):
            r = ev.evaluate({unit: t})
            out.append(
                UnitEffect(
                    unit=unit, t=t, general_recovered=adapted.general - r.general, domain_lost=r.domain - adapted.domain
                )
            )
    return out


def greedy_knapsack(
    effects: list[UnitEffect], order: list[str], budget: float, need: float | None, min_gain: float = 0.0
) -> list[tuple]:
    """(unit, t) choices in the order taken. Without `need`: take options by recovered per domain NLL spent
    (free ones first) while the predicted spend stays ≤ budget. With `need`: take them until the predicted
    recovery reaches `need` (cheapest recovery first). Options recovering ≤ `min_gain` are probe noise."""
    rank = {u: i for i, u in enumerate(order)}
    by_unit: dict[str, dict[float, UnitEffect]] = {}
    for e in effects:
        by_unit.setdefault(e.unit, {})[e.t] = e

    def efficiency(e: UnitEffect) -> tuple:
        free = e.domain_lost <= 0
        ratio = e.general_recovered / e.domain_lost if not free else math.inf
        return (not free, -ratio if not free else -e.general_recovered, rank.get(e.unit, len(rank)), -e.t)

    chosen: dict[str, UnitEffect] = {}
    taken, spent, got = [], 0.0, 0.0
    for e in sorted((e for e in effects if e.general_recovered > max(min_gain, 0.0)), key=efficiency):
        cur = chosen.get(e.unit)
        dg = e.general_recovered - (cur.general_recovered if cur else 0.0)
        dc = e.domain_lost - (cur.domain_lost if cur else 0.0)
        if dg <= 0 or (cur is not None and e.t <= cur.t and dc >= 0):
            continue
        if need is None and spent + dc > budget and dc > 0:
            continue
        if need is not None and got >= need and dc > 0:
            break
        chosen[e.unit], spent, got = e, spent + dc, got + dg
        taken.append((e.unit, e.t))
    return taken


def _feasible_prefix(taken: list[tuple], obj: Objective, run) -> dict[str, float]:
    """The knapsack plan, or its longest prefix that is feasible when evaluated (binary search; the empty plan,
    the adapted model, is always feasible in keep mode)."""
    if not taken or obj.violation(run(_ts(taken))) <= 0:
        return _ts(taken)
    lo, hi = 0, len(taken) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if obj.violation(run(_ts(taken[:mid]))) <= 0:
            lo = mid
        else:
            hi = mid - 1
    return _ts(taken[:lo])


def _ts(taken: list[tuple]) -> dict[str, float]:
    out: dict[str, float] = {}
    for unit, t in taken:
        out[unit] = t
    return out


def plan_units(ev: ProbeEvaluator, order: list[str], config: PlannerConfig, *, refine: bool = True) -> PlannerResult:
    """Measure, knapsack and refine on one evaluator; `order` is the weight-only (or probe) ranking of units."""
    started = time.perf_counter()
    trace: list[Trace] = []
    order = [u for u in order if u in ev.units] + [u for u in ev.units if u not in order]
    measured = order[: config.probe_units] if config.probe_units else order
    # for progress: references, two per measured unit, the knapsack's feasibility search, seeds, refinement budget
    refining = config.budget if refine else 0
    ev.planned = 2 + 2 * len(measured) + len(measured).bit_length() + 1 + len(config.uniform_seeds) + refining
    base, adapted = ev.evaluate(dict.fromkeys(ev.units, 1.0)), ev.evaluate({})
    obj = Objective(base, adapted, config)
    effects = measure_effects(ev, measured, config.t_mid, adapted)

    def run(ts: dict[str, float]) -> ProbeResult:
        r = ev.evaluate(ts)
        trace.append(Trace(ev.evaluations, time.perf_counter() - started, obj.value(r), obj.violation(r) <= 0))
        return r

    if obj.damage <= 0:
        log.info("the general probe shows no damage (adapted NLL ≤ base): nothing to recover, keeping the adapted")
        return PlannerResult(
            {},
            {},
            adapted,
            0.0,
            True,
            {"base": base, "adapted": adapted},
            effects,
            trace,
            obj.describe(),
            time.perf_counter() - started,
        )
    need = None if obj.mode == "keep" else config.probe_recovery * obj.damage
    taken = greedy_knapsack(effects, order, obj.allow, need, min_gain=config.tolerance * obj.damage)
    greedy = _feasible_prefix(taken, obj, run) if obj.mode == "keep" else _ts(taken)
    starts = {0: (greedy, run(greedy))}
    for i, t in enumerate(config.uniform_seeds, 1):
        ts = dict.fromkeys(measured, round(float(t), 6))
        starts[i] = (ts, run(ts))
    best_ts, best = pick(starts, obj, config.tolerance)
    start = next(
        ("knapsack" if i == 0 else f"uniform t={config.uniform_seeds[i - 1]:g}")
        for i, (ts, _) in starts.items()
        if ts == best_ts
    )
    if refine and config.budget > 0:
        refined = REFINEMENTS[config.refine](obj, effects, order, (best_ts, best), config, run)
        if refined[0] != best_ts:
            start = f"{start}, refined ({config.refine})"
        best_ts, best = refined
    return PlannerResult(
        ts=best_ts,
        greedy=greedy,
        result=best,
        value=obj.value(best),
        feasible=obj.violation(best) <= 0,
        refs={"base": base, "adapted": adapted},
        effects=effects,
        trace=trace,
        objective=obj.describe(),
        seconds=time.perf_counter() - started,
        start=start,
    )


def general_probe_for(pair, cache_dir, n: int = 8, tokens: int = 160):
    """The default general probe: `n` texts of `tokens` tokens sampled once from the base (seeded; as the
    demo's drift probe), cached in `cache_dir` under the base's content hash (never beside the user's model)."""
    from pathlib import Path

    out = Path(cache_dir) / f"base-samples-{pair.base.fingerprint()}-s{SAMPLE_SEED}-{n}x{tokens}.jsonl"
    return sample_base_text(pair.base.path, n, tokens, out=out)


def measured_plan(
    scores,
    pair,
    general_probe,
    domain_probe,
    config: PlannerConfig | None = None,
    *,
    rank_by: str = "score",
    cache_path=None,
    probe_tokens: int = PROBE_TOKENS,
    device: str = "cpu",
    method: str = "slerp",
    statistics=None,
    progress: ProgressCallback | None = None,
):
    """A `Plan` whose every unit's t comes from the measured planner; its `measurement` holds the probe
    figures, the evaluations spent and every unit's measured effect. `cache_path` (JSON lines) makes it
    resumable: evaluations already in the cache are not run again. With a data-aware `method` (regmean, fisher;
    `statistics`: its folder) the search runs twice — units moved by SLERP, and by the operator — and the plan
    that is better on the probes wins (the plan's params record both values and the winner). `progress` gets a
    `planner` `ProgressEvent` after each probe evaluation (cached ones count as done; total is the planned count
    of all searches, raised if exceeded)."""
    from pathlib import Path

    config = config or PlannerConfig()
    scores.check_pair(pair.base.fingerprint(), pair.adapted.fingerprint())
    probes = load_probes(pair.adapted.path, Path(general_probe), Path(domain_probe), probe_tokens)
    sublayers = config.granularity == "sublayer"
    order = scores.unit_ranking(rank_by)
    order = split_layers(order) if sublayers else order
    results: dict[str, tuple[PlannerResult, ProbeEvaluator]] = {}
    methods, offset = list(dict.fromkeys(("slerp", method))), 0  # an operator is searched as well, never instead
    for i, m in enumerate(methods):
        bar = _shifted(progress, offset, len(methods) - i) if progress else None
        ev = ProbeEvaluator(
            pair,
            probes,
            cache_path=Path(cache_path) if cache_path else None,
            device=device,
            sublayers=sublayers,
            method=m,
            statistics=statistics if m != "slerp" else None,
            progress=bar,
        )
        results[m] = (plan_units(ev, order, config), ev)
        offset += ev.evaluations + ev.cache_hits
        ev.release()  # one model in memory at a time
    won = max(results, key=lambda m: (results[m][0].feasible, results[m][0].value, m == "slerp"))
    res, ev = results[won]
    if len(results) > 1:
        log.info("measured planner: %s", ", ".join(f"{m} {r.value:.4f}" for m, (r, _) in results.items()))
    refs = res.refs
    measurement = Measurement(
        general_probe=probes.general_source,
        domain_probe=probes.domain_source,
        general_tokens=probes.general_tokens,
        domain_tokens=probes.domain_tokens,
        nll_general={"base": refs["base"].general, "adapted": refs["adapted"].general, "plan": res.result.general},
        nll_domain={"base": refs["base"].domain, "adapted": refs["adapted"].domain, "plan": res.result.domain},
        objective=res.objective + ("" if res.feasible else " (NOT met: the closest plan found)"),
        evaluations=sum(e.evaluations for _, e in results.values()),
        cached=sum(e.cache_hits for _, e in results.values()),
        budget=config.budget,
        seconds=round(res.seconds, 3),
        greedy=res.greedy,
        effects=res.effects,
    )
    params = {k: ",".join(map(str, v)) if isinstance(v, tuple) else v for k, v in config.model_dump().items()}
    params = {k: v for k, v in params.items() if v is not None}
    params |= {
        "rank_by": rank_by,
        "probe_value": round(res.value, 6),
        "feasible": res.feasible,
        "start": res.start,
        "evaluations": ev.evaluations,
        "probe_seconds": round(res.seconds, 3),
    }
    if len(results) > 1:
        params |= {"method": won, **{f"probe_value_{m}": round(r.value, 6) for m, (r, _) in results.items()}}
    plan = plan_from_unit_ts(
        scores, res.ts, order, policy="measured", params=params, method=won, measurement=measurement
    )
    return plan.model_copy(update={"statistics": str(statistics)}) if won != "slerp" else plan


def _shifted(progress: ProgressCallback, offset: int, searches: int) -> ProgressCallback:
    """One search's events as part of all: `offset` evaluations done before it, `searches` like it still to run."""
    return lambda e: progress(dataclasses.replace(e, done=offset + e.done, total=offset + e.total * searches))

"""Restoration policies: a ScoreTable (every unit scored and ranked) becomes a Plan (presets, uniform, custom, top-k, fraction).

A policy is one function decorated with `@register_policy(name, summary, uses)`; `POLICY_RULES` drives
`plan --policy`, `spear-mm ls policies` and make_plan (the measured planner registers `measured` in measured/).

Counting rule: a policy that restores a fraction f of L layers restores `round_half_up(f·L)` of them, at least 1
when f > 0 and at most L (L = 22: 10% → 2, 25% → 6, 50% → 11; L = 6: 10% → 1, 25% → 2, 50% → 3).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from spear_mm.errors import SpearError
from spear_mm.io.hub import hub_label
from spear_mm.planning.plan import LayerRule, Method, Plan, Provenance, UnitInfo
from spear_mm.scoring.table import RankBy, ScoreTable

log = logging.getLogger(__name__)

# name -> (fraction of layers restored, t); aggressive gives the top quarter of the model AGGRESSIVE_TOP_T.
PRESETS: dict[str, tuple[float, float]] = {
    "conservative": (0.10, 0.5),
    "balanced": (0.25, 0.7),
    "aggressive": (0.5, 0.6),
}
AGGRESSIVE_TOP_T = 0.9
AGGRESSIVE_TOP_FRACTION = 0.25


@dataclass(frozen=True)
class Ask:
    """What a policy rule is given: the scores, the joint ranking of all units and make_plan's options."""

    scores: ScoreTable
    ranking: list[str]
    fraction: float | None
    t: float | None
    k: int | None
    layer_ts: list[float] | None


Rule = Callable[[str, Ask], tuple[dict[str, float], dict]]  # (policy name, ask) -> (unit → t, provenance params)


@dataclass(frozen=True)
class PolicyRule:
    """A registered policy: its name, what `spear-mm ls policies` says of it, the make_plan options it reads (any
    other one given is refused), and the rule (None: the plan is made elsewhere, e.g. the measured planner)."""

    name: str
    summary: str
    uses: frozenset[str]
    rule: Rule | None = None


POLICY_RULES: dict[str, PolicyRule] = {}


def register_policy(name: str, summary: str, uses: set[str] | frozenset[str] = frozenset()):
    """Decorator: register the rule function under `name` (for `plan --policy`, `ls policies`, make_plan).
    Registering None (`register_policy(...)(None)`) names a policy planned elsewhere."""

    def decorate(rule: Rule | None) -> Rule | None:
        known = POLICY_RULES.get(name)
        if known is not None and _origin(known.rule) != _origin(rule):  # the same code imported again is fine
            raise SpearError(
                f"policy {name!r} is registered twice ({_origin(known.rule)} and {_origin(rule)}): give the new "
                "rule another name."
            )
        POLICY_RULES[name] = PolicyRule(name, summary, frozenset(uses), rule)
        return rule

    return decorate


def _origin(rule: Rule | None) -> str | None:
    return None if rule is None else f"{rule.__module__}.{rule.__qualname__}"


def _readers(option: str) -> str:
    """The policies that read `option`, the presets as one ('top-k and the presets')."""
    names = [r.name for r in POLICY_RULES.values() if option in r.uses and r.name not in PRESETS]
    if any(option in POLICY_RULES[p].uses for p in PRESETS if p in POLICY_RULES):
        names.append("the presets")
    return " and ".join(filter(None, [", ".join(names[:-1]), names[-1]])) if names else "no policy"


def count_layers(fraction: float, num_layers: int) -> int:
    """round_half_up(fraction·L), at least 1 for a non-zero fraction, at most L."""
    if not 0.0 <= fraction <= 1.0:
        raise SpearError(f"fraction {fraction} is outside [0, 1].")
    if fraction == 0.0:
        return 0
    return min(num_layers, max(1, math.floor(fraction * num_layers + 0.5 + 1e-9)))


def check_options(policy: str, given: dict[str, object], flag: dict[str, str] | None = None) -> None:
    """Refuse options that `policy` would ignore (naming the policies that read them), and a preset given both
    `k` and `fraction` (k wins). `flag` maps keyword names to how the user wrote them (CLI flags)."""
    name = (flag or {}).get
    rule = POLICY_RULES.get(policy)
    ignored = [k for k, v in given.items() if v is not None and rule is not None and k not in rule.uses]
    if ignored:
        why = "; ".join(f"{name(k, k)} is read by {_readers(k)}" for k in ignored)
        raise SpearError(
            f"policy {policy} does not use {', '.join(name(k, k) for k in ignored)} ({why}); drop it "
            "or choose a policy that reads it."
        )
    if policy in PRESETS and given.get("k") is not None and given.get("fraction") is not None:
        raise SpearError(
            f"policy {policy}: give {name('k', 'k')} (a count of units) or {name('fraction', 'fraction')}"
            " (a share of them), not both: the count would win and the share be ignored."
        )


def _check_t(t: float | None, what: str) -> float:
    if t is None:
        raise SpearError(f"policy {what} needs an explicit t (the weight of the base, 0..1), e.g. --t 0.7.")
    if not 0.0 <= t <= 1.0:
        raise SpearError(f"t = {t} is outside [0, 1] (t is the weight of the base model).")
    return float(t)


def _preset(policy: str, ask: Ask) -> tuple[dict[str, float], dict]:
    """A preset: the top `fraction` (or `k`) of the ranking at the preset's t; aggressive gives the top quarter of
    the units AGGRESSIVE_TOP_T."""
    preset_fraction, preset_t = PRESETS[policy]
    units = len(ask.ranking)
    fraction = preset_fraction if ask.fraction is None else ask.fraction
    count = ask.k if ask.k is not None else count_layers(fraction, units)
    if policy == "aggressive":
        top_t = AGGRESSIVE_TOP_T if ask.t is None else _check_t(ask.t, policy)
        top = min(count, count_layers(AGGRESSIVE_TOP_FRACTION, units))
        ts = {u: (top_t if j < top else preset_t) for j, u in enumerate(ask.ranking[:count])}
        return ts, {"fraction": fraction, "k": count, "t_top": top_t, "top": top, "t_rest": preset_t}
    t = preset_t if ask.t is None else _check_t(ask.t, policy)
    return dict.fromkeys(ask.ranking[:count], t), {"fraction": fraction, "k": count, "t": t}


def _register_presets() -> None:
    for name, (fraction, t) in PRESETS.items():
        top = f"; the top {AGGRESSIVE_TOP_FRACTION:.0%} at t={AGGRESSIVE_TOP_T}" if name == "aggressive" else ""
        register_policy(name, f"the top {fraction:.0%} units of the ranking at t={t}{top}", {"fraction", "t", "k"})(
            _preset
        )


_register_presets()  # first: `ls policies` and `--policy` list the presets first


@register_policy("uniform", "every unit at --t", {"t"})
def _uniform(policy: str, ask: Ask) -> tuple[dict[str, float], dict]:
    t = _check_t(ask.t, "uniform")
    return dict.fromkeys(ask.ranking, t), {"t": t}


@register_policy(
    "custom", "one t per layer from --layers (--embed/--head/--final-norm for the other units)", {"layer_ts"}
)
def _custom(policy: str, ask: Ask) -> tuple[dict[str, float], dict]:
    n, layer_ts = ask.scores.num_layers, ask.layer_ts
    if layer_ts is None or len(layer_ts) != n:
        got = "none" if layer_ts is None else len(layer_ts)
        raise SpearError(f"policy custom needs one t per layer ({n} values, got {got}), e.g. --layers 0,0.7,...")
    ts = {f"layer.{i}": _check_t(v, "custom") for i, v in enumerate(layer_ts)}
    return ts, {"layers": ",".join(map(str, layer_ts))}


@register_policy("top-k", "the --k highest-ranked units at --t", {"t", "k"})
def _top_k(policy: str, ask: Ask) -> tuple[dict[str, float], dict]:
    t, units = _check_t(ask.t, policy), len(ask.ranking)
    if ask.k is None or not 0 <= ask.k <= units:
        raise SpearError(f"policy top-k needs --k between 0 and {units} (the number of ranked units).")
    return dict.fromkeys(ask.ranking[: ask.k], t), {"t": t, "k": ask.k, "fraction": ask.fraction}


@register_policy("fraction", "the top --fraction of units at --t", {"t", "fraction"})
def _fraction(policy: str, ask: Ask) -> tuple[dict[str, float], dict]:
    t = _check_t(ask.t, policy)
    if ask.fraction is None:
        raise SpearError("policy fraction needs --fraction (share of units to restore, 0..1).")
    count = count_layers(ask.fraction, len(ask.ranking))
    return dict.fromkeys(ask.ranking[:count], t), {"t": t, "k": count, "fraction": ask.fraction}


def _unit_ts(scores: ScoreTable, policy, fraction, t, k, layer_ts, rank_by) -> tuple[dict[str, float], dict]:
    """t for every unit (layers, embed, head, final_norm) and the parameters that produced it (provenance).

    Presets, top-k and fraction restore the top of the joint ranking of all units, so the embeddings or the
    head are restored when they rank high, like any layer."""
    rule = POLICY_RULES.get(policy)
    if rule is None or rule.rule is None:
        makers = [n for n, r in POLICY_RULES.items() if r.rule is not None]
        raise SpearError(f"unknown policy '{policy}'; choose one of {', '.join(makers)}.")
    return rule.rule(policy, Ask(scores, scores.unit_ranking(rank_by), fraction, t, k, layer_ts))


def make_plan(
    scores: ScoreTable,
    policy: str = "balanced",
    *,
    fraction: float | None = None,
    t: float | None = None,
    k: int | None = None,
    layer_ts: list[float] | None = None,
    embed: float | None = None,
    head: float | None = None,
    final_norm: float | None = None,
    method: Method = "slerp",
    rank_by: RankBy = "score",
) -> Plan:
    """A plan from a policy: conservative | balanced | aggressive (presets; `fraction`, `t`, `k` override),
    uniform (t), custom (`layer_ts`), top-k (k, t), fraction (fraction, t). Presets, top-k and fraction restore
    the top of the joint ranking of all units (`rank_by`: score | restore_gain | activation_drift), embeddings,
    head and final norm included; `embed`, `head`, `final_norm` override their t. Every layer is listed with
    its score and rank so the YAML is reviewable. Options the policy would ignore are refused."""
    check_options(policy, {"fraction": fraction, "t": t, "k": k, "layer_ts": layer_ts})
    ts, params = _unit_ts(scores, policy, fraction, t, k, layer_ts, rank_by)
    explicit = {"embed": embed, "head": head, "final_norm": final_norm}
    for what, value in explicit.items():
        if value is not None:
            ts[what] = _check_t(value, f"{policy} ({what})")
    if (embed_unit := scores.unit("embed")) is not None and embed_unit.tied and head is None:
        ts["head"] = ts.get("embed", 0.0)  # tied: lm_head is the embedding (recorded so in the provenance)
    params |= {u: ts.get(u, 0.0) for u in ("embed", "head", "final_norm")}
    params |= {"alpha": scores.config.alpha, "aggregate": scores.config.aggregate}
    if rank_by != "score":
        params["rank_by"] = rank_by
    return plan_from_unit_ts(scores, ts, scores.unit_ranking(rank_by), policy=policy, params=params, method=method)


def plan_from_unit_ts(
    scores: ScoreTable,
    ts: dict[str, float],
    order: list[str],
    *,
    policy: str,
    params: dict,
    method: Method = "slerp",
    measurement=None,
) -> Plan:
    """The Plan that gives each unit id in `ts` its t (unlisted units keep the adapted weights), every layer and
    unit listed with its score and its rank in `order`; a tied head follows the embedding unless set."""
    ts = dict(ts)
    embed_unit = scores.unit("embed")
    if embed_unit is not None and embed_unit.tied and "head" not in ts:
        ts["head"] = ts.get("embed", 0.0)  # tied: lm_head is the embedding
    ranks = {u: i + 1 for i, u in enumerate(order)}
    attn = {}  # layer → its attention module types (sub-layer plans override them)
    for m in scores.modules:
        if m.layer is not None and m.module.startswith("attn"):
            attn.setdefault(m.layer, set()).add(m.module)
    rules = []
    for s in scores.layers:
        unit = f"layer.{s.layer}"
        t, modules = ts.get(unit, 0.0), {}
        if f"{unit}.attn" in ts or f"{unit}.mlp" in ts:  # sub-layer units: the MLP half (norms included) is the
            t = ts.get(f"{unit}.mlp", 0.0)  # layer's t, the attention projections override it
            t_attn = ts.get(f"{unit}.attn", 0.0)
            modules = {m: t_attn for m in sorted(attn.get(s.layer, ()))} if t_attn != t else {}
        rank = ranks.get(unit) or min((ranks[h] for h in (f"{unit}.attn", f"{unit}.mlp") if h in ranks), default=s.rank)
        rules.append(LayerRule(layer=s.layer, t=t, modules=modules, score=round(s.score, 6), rank=rank))
    units = {u.unit: UnitInfo(score=round(u.score, 6), rank=ranks.get(u.unit)) for u in scores.units if u.layer is None}
    return Plan(
        method=method,
        num_layers=scores.num_layers,
        layers=rules,
        embed=ts.get("embed", 0.0),
        head=ts.get("head", 0.0),
        final_norm=ts.get("final_norm", 0.0),
        other=ts.get("other", 0.0),
        units=units,
        measurement=measurement,
        provenance=Provenance(
            policy=policy,
            params={k_: v for k_, v in params.items() if v is not None},
            scores_hash=scores.content_hash(),
            base=scores.base_fingerprint,
            adapted=scores.adapted_fingerprint,
            base_hub=hub_label(scores.base),
            adapted_hub=hub_label(scores.adapted),
        ),
    )


def describe(plan: Plan) -> list[tuple[int, float, str, int | None, float | None]]:
    """(layer, t, action, rank, score) of the restored layers, most damaging first."""
    rules = {r.layer: r for r in plan.layers}
    rows = [(i, plan.layer_t(i), rules[i].action if i in rules else "keep") for i in plan.restored_layers()]
    out = [(i, t, a, getattr(rules.get(i), "rank", None), getattr(rules.get(i), "score", None)) for i, t, a in rows]
    return sorted(out, key=lambda r: (r[3] is None, r[3] or 0, r[0]))

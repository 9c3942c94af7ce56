"""Restoration policies (ScoreTable → Plan) and plan exports: mergekit SLERP config, CPT freeze list.

Counting rule: a policy that restores a fraction f of L layers restores `round_half_up(f·L)` of them, at least 1
when f > 0 and at most L (L = 22: 10% → 2, 25% → 6, 50% → 11; L = 6: 10% → 1, 25% → 2, 50% → 3).
"""

from __future__ import annotations

import logging
import math

from spear_mm.errors import SpearError
from spear_mm.io.hub import hub_label
from spear_mm.planning.plan import LayerRule, Method, Plan, Provenance
from spear_mm.scoring.table import ScoreTable

log = logging.getLogger(__name__)

# name -> (fraction of layers restored, t); aggressive gives the top quarter of the model AGGRESSIVE_TOP_T.
PRESETS: dict[str, tuple[float, float]] = {
    "conservative": (0.10, 0.5),
    "balanced": (0.25, 0.7),
    "aggressive": (0.5, 0.6),
}
AGGRESSIVE_TOP_T = 0.9
AGGRESSIVE_TOP_FRACTION = 0.25
POLICIES = (*PRESETS, "uniform", "custom", "top-k", "fraction")


def count_layers(fraction: float, num_layers: int) -> int:
    """round_half_up(fraction·L), at least 1 for a non-zero fraction, at most L."""
    if not 0.0 <= fraction <= 1.0:
        raise SpearError(f"fraction {fraction} is outside [0, 1].")
    if fraction == 0.0:
        return 0
    return min(num_layers, max(1, math.floor(fraction * num_layers + 0.5 + 1e-9)))


def _check_t(t: float | None, what: str) -> float:
    if t is None:
        raise SpearError(f"policy {what} needs an explicit t (the weight of the base, 0..1), e.g. --t 0.7.")
    if not 0.0 <= t <= 1.0:
        raise SpearError(f"t = {t} is outside [0, 1] (t is the weight of the base model).")
    return float(t)


def _layer_ts(scores: ScoreTable, policy: str, fraction, t, k, layer_ts) -> tuple[dict[int, float], dict]:
    """t for every layer, and the parameters that produced it (for the provenance)."""
    n = scores.num_layers
    ranking = scores.ranking()
    if policy == "custom":
        if layer_ts is None or len(layer_ts) != n:
            got = "none" if layer_ts is None else len(layer_ts)
            raise SpearError(f"policy custom needs one t per layer ({n} values, got {got}), e.g. --layers 0,0.7,...")
        return {i: _check_t(v, "custom") for i, v in enumerate(layer_ts)}, {"layers": ",".join(map(str, layer_ts))}
    if policy == "uniform":
        t = _check_t(t, "uniform")
        return dict.fromkeys(range(n), t), {"t": t}
    if policy in ("top-k", "fraction"):
        t = _check_t(t, policy)
        if policy == "top-k" and (k is None or not 0 <= k <= n):
            raise SpearError(f"policy top-k needs --k between 0 and {n}.")
        if policy == "fraction" and fraction is None:
            raise SpearError("policy fraction needs --fraction (share of layers to restore, 0..1).")
        count = k if policy == "top-k" else count_layers(fraction, n)
        return dict.fromkeys(ranking[:count], t), {"t": t, "k": count, "fraction": fraction}
    if policy not in PRESETS:
        raise SpearError(f"unknown policy '{policy}'; choose one of {', '.join(POLICIES)}.")
    preset_fraction, preset_t = PRESETS[policy]
    fraction = preset_fraction if fraction is None else fraction
    count = k if k is not None else count_layers(fraction, n)
    if policy == "aggressive":
        top_t = AGGRESSIVE_TOP_T if t is None else _check_t(t, policy)
        top = min(count, count_layers(AGGRESSIVE_TOP_FRACTION, n))
        ts = {i: (top_t if j < top else preset_t) for j, i in enumerate(ranking[:count])}
        return ts, {"fraction": fraction, "k": count, "t_top": top_t, "top": top, "t_rest": preset_t}
    t = preset_t if t is None else _check_t(t, policy)
    return dict.fromkeys(ranking[:count], t), {"fraction": fraction, "k": count, "t": t}


def make_plan(
    scores: ScoreTable,
    policy: str = "balanced",
    *,
    fraction: float | None = None,
    t: float | None = None,
    k: int | None = None,
    layer_ts: list[float] | None = None,
    embed: float = 0.0,
    head: float = 0.0,
    final_norm: float = 0.0,
    method: Method = "slerp",
) -> Plan:
    """A plan from a policy: conservative | balanced | aggressive (presets; `fraction`, `t`, `k` override),
    uniform (t), custom (`layer_ts`), top-k (k, t), fraction (fraction, t). Every layer is listed with its
    score and rank so the YAML is reviewable; embeddings, head and final norm keep the adapted weights (t = 0)
    unless given."""
    ts, params = _layer_ts(scores, policy, fraction, t, k, layer_ts)
    for what, value in (("embed", embed), ("head", head), ("final_norm", final_norm)):
        _check_t(value, f"{policy} ({what})")
    params |= {"embed": embed, "head": head, "final_norm": final_norm}
    params |= {"alpha": scores.config.alpha, "aggregate": scores.config.aggregate}
    rules = [
        LayerRule(layer=s.layer, t=ts.get(s.layer, 0.0), score=round(s.score, 6), rank=s.rank) for s in scores.layers
    ]
    return Plan(
        method=method,
        num_layers=scores.num_layers,
        layers=rules,
        embed=embed,
        head=head,
        final_norm=final_norm,
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

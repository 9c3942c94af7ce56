"""Restoration policies (ScoreTable → Plan) and plan exports: mergekit SLERP config, CPT freeze list.

Counting rule: a policy that restores a fraction f of L layers restores `round_half_up(f·L)` of them, at least 1
when f > 0 and at most L (L = 22: 10% → 2, 25% → 6, 50% → 11; L = 6: 10% → 1, 25% → 2, 50% → 3).
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import yaml

from spear_mm.architecture import ParamInfo, for_model_type, layer_map
from spear_mm.errors import SpearError
from spear_mm.freeze import YAML_KEY, FreezeSummary, apply_freeze, freeze_patterns, write_freeze_yaml
from spear_mm.plan import LayerRule, Method, Plan, Provenance, UnitInfo
from spear_mm.score_table import RankBy, ScoreTable

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


def _unit_ts(scores: ScoreTable, policy, fraction, t, k, layer_ts, rank_by) -> tuple[dict[str, float], dict]:
    """t for every unit (layers, embed, head, final_norm) and the parameters that produced it (provenance).

    Presets, top-k and fraction restore the top of the joint ranking of all units, so the embeddings or the
    head are restored when they rank high, like any layer."""
    n = scores.num_layers
    ranking = scores.unit_ranking(rank_by)
    units = len(ranking)
    if policy == "custom":
        if layer_ts is None or len(layer_ts) != n:
            got = "none" if layer_ts is None else len(layer_ts)
            raise SpearError(f"policy custom needs one t per layer ({n} values, got {got}), e.g. --layers 0,0.7,...")
        ts = {f"layer.{i}": _check_t(v, "custom") for i, v in enumerate(layer_ts)}
        return ts, {"layers": ",".join(map(str, layer_ts))}
    if policy == "uniform":
        t = _check_t(t, "uniform")
        return dict.fromkeys(ranking, t), {"t": t}
    if policy in ("top-k", "fraction"):
        t = _check_t(t, policy)
        if policy == "top-k" and (k is None or not 0 <= k <= units):
            raise SpearError(f"policy top-k needs --k between 0 and {units} (the number of ranked units).")
        if policy == "fraction" and fraction is None:
            raise SpearError("policy fraction needs --fraction (share of units to restore, 0..1).")
        count = k if policy == "top-k" else count_layers(fraction, units)
        return dict.fromkeys(ranking[:count], t), {"t": t, "k": count, "fraction": fraction}
    if policy not in PRESETS:
        raise SpearError(f"unknown policy '{policy}'; choose one of {', '.join(POLICIES)}.")
    preset_fraction, preset_t = PRESETS[policy]
    fraction = preset_fraction if fraction is None else fraction
    count = k if k is not None else count_layers(fraction, units)
    if policy == "aggressive":
        top_t = AGGRESSIVE_TOP_T if t is None else _check_t(t, policy)
        top = min(count, count_layers(AGGRESSIVE_TOP_FRACTION, units))
        ts = {u: (top_t if j < top else preset_t) for j, u in enumerate(ranking[:count])}
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
    its score and rank so the YAML is reviewable."""
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
    scores: ScoreTable, ts: dict[str, float], order: list[str], *, policy: str, params: dict, method: Method = "slerp",
    measurement=None,
) -> Plan:  # fmt: skip
    """The Plan that gives each unit id in `ts` its t (unlisted units keep the adapted weights), every layer and
    unit listed with its score and its rank in `order`; a tied head follows the embedding unless set."""
    ts = dict(ts)
    embed_unit = scores.unit("embed")
    if embed_unit is not None and embed_unit.tied and "head" not in ts:
        ts["head"] = ts.get("embed", 0.0)  # tied: lm_head is the embedding
    ranks = {u: i + 1 for i, u in enumerate(order)}
    rules = [
        LayerRule(layer=s.layer, t=ts.get(f"layer.{s.layer}", 0.0), score=round(s.score, 6),
                  rank=ranks.get(f"layer.{s.layer}", s.rank))
        for s in scores.layers
    ]  # fmt: skip
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
        ),
    )


def describe(plan: Plan) -> list[tuple[int, float, str, int | None, float | None]]:
    """(layer, t, action, rank, score) of the restored layers, most damaging first."""
    rules = {r.layer: r for r in plan.layers}
    rows = [(i, plan.layer_t(i), rules[i].action if i in rules else "keep") for i in plan.restored_layers()]
    out = [(i, t, a, getattr(rules.get(i), "rank", None), getattr(rules.get(i), "score", None)) for i, t, a in rows]
    return sorted(out, key=lambda r: (r[3] is None, r[3] or 0, r[0]))


# -- mergekit --------------------------------------------------------------------------------------------------------
def _tensor_names(adapted_path: str | Path) -> tuple[dict[str, ParamInfo], str]:
    """Tensor classification of the adapted model; Llama names when the folder is not readable here."""
    try:
        from spear_mm.checkpoint import Checkpoint

        ckpt = Checkpoint.open(adapted_path)
        return layer_map(ckpt.names, ckpt.model_type), ckpt.model_type
    except SpearError:
        names = ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"]
        names += [f"model.layers.0.{m}.weight" for m in ("input_layernorm", "post_attention_layernorm")]
        return layer_map(names + ["model.layers.0.self_attn.q_proj.weight"], "llama"), "llama"


def _layer_suffixes(params: dict[str, ParamInfo], model_type: str) -> dict[str, set[str]]:
    """module type -> name parts after the layer prefix (e.g. attn.q -> {'self_attn.q_proj'})."""
    rx = for_model_type(model_type).layer_re
    out: dict[str, set[str]] = {}
    for p in params.values():
        if p.group == "layer" and (m := rx.search(p.name)):
            out.setdefault(p.module, set()).add(re.sub(r"\.(weight|bias)$", "", p.name[m.end() :]))
    return out


def to_mergekit_config(
    plan: Plan, base_path: str | Path, adapted_path: str | Path, *, dtype: str | None = None
) -> dict:
    """A mergekit config that performs this plan's SLERP (or LERP) merge.

    mergekit's SLERP `t` weighs the model that is NOT `base_model`; with `base_model` = the adapted model
    and the other source = the base, mergekit's t equals spear-mm's t. A uniform plan is one slice with scalar
    values. Otherwise every layer gets its own one-layer slice with scalar values, so nothing depends on how
    mergekit samples a list (a "gradient") over a slice. Non-layer tensors get explicit
    values in every rule set (mergekit takes them from the first/last slice). Filters are substrings of tensor
    names, the first match wins.
    """
    if plan.method not in ("slerp", "lerp"):
        raise SpearError(f"mergekit export supports slerp and lerp plans, not '{plan.method}'.")
    params, model_type = _tensor_names(adapted_path)
    n = plan.num_layers
    fixed: list[dict] = [
        {"filter": p.name, "value": round(plan.t_for(p), 6)}
        for p in params.values()
        if p.group in ("embed", "head", "final_norm")
    ]
    if not any(p.group == "head" for p in params.values()):  # tied head: mergekit may still list lm_head
        fixed.append({"filter": "lm_head", "value": round(plan.head, 6)})
    overrides = {m for r in plan.layers for m in r.modules}
    modules = sorted(overrides | ({"norm"} if plan.layer_norms != "follow" else set()))
    suffixes = _layer_suffixes(params, model_type)

    def layer_rules(i: int) -> list[dict]:
        rules = [
            {"filter": suffix, "value": round(plan.t_for(ParamInfo(f"layers.{i}.x", "layer", i, module)), 6)}
            for module in modules
            for suffix in sorted(suffixes.get(module, ()))
        ]
        return [*fixed, *rules, {"value": round(plan.layer_t(i), 6)}]

    per_layer = [layer_rules(i) for i in range(n)]
    ranges = [(0, n)] if all(r == per_layer[0] for r in per_layer) else [(i, i + 1) for i in range(n)]
    adapted, base = str(Path(adapted_path)), str(Path(base_path))
    slices = []
    for lo, hi in ranges:
        rules = per_layer[lo]
        sources = [{"model": adapted, "layer_range": [lo, hi]}, {"model": base, "layer_range": [lo, hi]}]
        if plan.method == "slerp":
            slices.append({"sources": sources, "parameters": {"t": rules}})
        else:  # linear: weight of the adapted = 1 − t, of the base = t
            sources[0]["parameters"] = {"weight": [dict(r, value=_one_minus(r["value"])) for r in rules]}
            sources[1]["parameters"] = {"weight": rules}
            slices.append({"sources": sources})
    config: dict = {"slices": slices, "base_model": adapted}
    if plan.method == "slerp":
        config |= {"merge_method": "slerp", "parameters": {"t": [*fixed, {"value": round(plan.other, 6)}]}}
    else:
        config |= {"merge_method": "linear", "parameters": {"normalize": True}}
    if dtype:
        config["dtype"] = dtype
    return config


def _one_minus(v):
    return [round(1 - x, 6) for x in v] if isinstance(v, list) else round(1 - v, 6)


def mergekit_yaml(plan: Plan, base_path: str | Path, adapted_path: str | Path, **kw) -> str:
    header = f"# mergekit config exported by spear-mm: {plan.summary()}\n"
    return header + yaml.safe_dump(to_mergekit_config(plan, base_path, adapted_path, **kw), sort_keys=False)


# -- freeze list -------------------------------------------------------------------------------------------------
def freeze_patterns_for_plan(plan: Plan, names: list[str] | None = None, model_type: str = "llama") -> list[str]:
    """Regexes of the parameters that train in the next CPT run: everything the plan does not restore fully.

    Without `names`: compact layer patterns (layers with t = 1 frozen). With `names`: one anchored pattern
    per trainable tensor (Spectrum style), honouring per-module overrides and layer-norm rules too.
    """
    if names is None:
        return freeze_patterns(
            plan.frozen_layers(),
            freeze_embeddings=plan.embed == 1.0,
            freeze_head=plan.head == 1.0,
            freeze_final_norm=plan.final_norm == 1.0,
        )
    params = layer_map(names, model_type)
    return ["^" + n.replace(".", "[.]") + "$" for n in names if plan.t_for(params[n]) < 1.0]


def to_freeze_yaml(plan: Plan, names: list[str] | None = None, model_type: str = "llama") -> str:
    """Spectrum-style YAML (`unfrozen_parameters:`) for re-running CPT with the fully restored layers frozen."""
    head = f"# spear-mm freeze list from a plan ({plan.summary()}).\n# Layers frozen: {plan.frozen_layers()}\n"
    patterns = freeze_patterns_for_plan(plan, names, model_type)
    return head + yaml.safe_dump({YAML_KEY: patterns}, sort_keys=False, width=1000)


def write_freeze_plan(plan: Plan, path: str | Path, names: list[str] | None = None, model_type: str = "llama") -> Path:
    comment = f"from a spear-mm plan ({plan.summary()})\nlayers frozen: {plan.frozen_layers()}"
    return write_freeze_yaml(path, freeze_patterns_for_plan(plan, names, model_type), comment)


def apply_freeze_plan(model, plan: Plan) -> FreezeSummary:
    """Freeze (requires_grad=False) every parameter the plan restores fully (t = 1); the rest trains."""
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", None)
    if layers is not None and layers != plan.num_layers:
        raise SpearError(f"the plan is for {plan.num_layers} layers, the model has {layers}.")
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    model_type = getattr(config, "model_type", "llama")
    summary = apply_freeze(model, freeze_patterns_for_plan(plan, names, model_type))
    log.info("freeze from plan: %s", summary)
    return summary

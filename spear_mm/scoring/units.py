"""Plannable units: every tensor of the model belongs to exactly one unit, and every unit is scored and ranked.

Units are the transformer layers (`layer.N`, their norms included), the token embeddings (`embed`; also
`lm_head` when the head is tied), an untied `head`, the `final_norm`, and `other` (anything else outside the
blocks, e.g. learned position embeddings). In CPT the units outside the blocks often move most, so a plan that
never restores them loses to a uniform merge (issue 10).

Scale: a layer's score is the mean of its matrices' robust z-scores (within module type). A unit outside the
blocks has no peers of its type, so it **scores like the layers that moved like it**: the mean score of the
max(1, L // 10) layers whose relative change is nearest to the unit's drift (log scale). The drift is the median
row drift for an embedding or head matrix (how the vocabulary as a whole moved; the relative change is dominated
by the few rows of frequent domain tokens, which is domain gain, not general damage) and the relative change
otherwise. The score stays inside the layers' range, and a tie with the top layer ranks after it: no unit ranks
first by construction. `drift_quantile` records the share of layers that moved less. The earlier scale, the robust z of the relative change against the layers', gave
SmolLM2's tied embedding 57-62 against ≤ 7.2 for the layers (their changes are tightly clustered), so every
preset restored it first although restoring it recovered little (docs/scoring.md, "Units outside the blocks").
"""

from __future__ import annotations

import math

import torch

from spear_mm.io.architecture import ParamInfo
from spear_mm.scoring.table import LayerScore, ModuleScore, UnitScore

NON_LAYER_UNITS = ("embed", "head", "final_norm", "other")


def unit_of(p: ParamInfo, sublayers: bool = False) -> str:
    """The unit id of one tensor: 'layer.N', 'embed', 'head', 'final_norm' or 'other'. With `sublayers` a layer
    is two units: 'layer.N.attn' (the attention projections) and 'layer.N.mlp' (the rest: MLP and the norms)."""
    if p.group == "layer" and p.layer is not None:
        if sublayers:
            return f"layer.{p.layer}.{'attn' if p.module.startswith('attn') else 'mlp'}"
        return f"layer.{p.layer}"
    return p.group if p.group in NON_LAYER_UNITS else "other"


def units_of(params: dict[str, ParamInfo], sublayers: bool = False) -> dict[str, list[str]]:
    """{unit id: tensor names}, layers first in order (attention before MLP), then the units outside the blocks."""
    out: dict[str, list[str]] = {}
    for name, p in params.items():
        out.setdefault(unit_of(p, sublayers), []).append(name)

    def order(u: str) -> tuple:
        if u.startswith("layer."):
            parts = u.split(".")
            return (0, int(parts[1]), parts[2] if len(parts) > 2 else "")
        return (1, NON_LAYER_UNITS.index(u), u)

    return {u: out[u] for u in sorted(out, key=order)}


def split_layers(order: list[str]) -> list[str]:
    """A unit ranking with every 'layer.N' replaced by its two sub-layers, in place (attention first)."""
    return [
        x for u in order for x in ((f"{u}.attn", f"{u}.mlp") if u.count(".") == 1 and u.startswith("layer.") else (u,))
    ]


def row_drift(base: torch.Tensor, adapted: torch.Tensor, chunk: int = 8192) -> dict[str, float]:
    """Per-row relative change ‖ΔW_i‖/‖W_B,i‖ of an embedding/head matrix: median, 99th percentile and max.

    CPT moves the rows of frequent domain tokens far more than the rest; the median says how much the
    vocabulary as a whole moved, the tail how concentrated the move is. Rows of zero base norm are skipped."""
    ratios = []
    for i in range(0, base.shape[0], chunk):
        b, a = base[i : i + chunk].double(), adapted[i : i + chunk].double()
        nb = torch.linalg.vector_norm(b, dim=1)
        nd = torch.linalg.vector_norm(a - b, dim=1)
        keep = nb > 0
        ratios.append((nd[keep] / nb[keep]).float())
    r = torch.cat(ratios) if ratios else torch.zeros(0)
    if r.numel() == 0:
        return {}
    return {
        "row_drift_median": float(r.median()),
        "row_drift_p99": float(torch.quantile(r, 0.99)) if r.numel() > 1 else float(r[0]),
        "row_drift_max": float(r.max()),
    }


def drift_quantile(drift: float, layer_changes: list[float]) -> float:
    """Share q of the layers whose relative change is below `drift`, in [0, 1] (0.5 without layers)."""
    if not layer_changes:
        return 0.5
    return sum(c < drift for c in layer_changes) / len(layer_changes)


def like_layers_score(drift: float, layer_changes: list[float], layer_scores: list[float]) -> float:
    """The mean score of the k = max(1, L // 10) layers whose relative change is nearest to `drift` on a log
    scale: a unit that moved like layer 7 scores like layer 7. Never above the top layer's score."""
    if not layer_scores:
        return 0.0
    k = max(1, len(layer_scores) // 10)
    log = lambda x: math.log(max(x, 1e-12))  # noqa: E731
    near = sorted(range(len(layer_changes)), key=lambda i: (abs(log(layer_changes[i]) - log(drift)), i))[:k]
    return sum(layer_scores[i] for i in near) / k


def unit_scores(rows: list[ModuleScore], layers: list[LayerScore]) -> list[UnitScore]:
    """Every unit of the model with its score, jointly ranked (1 = most damaging drift; ties by unit order)."""
    out = [
        UnitScore(
            unit=f"layer.{s.layer}",
            group="layer",
            layer=s.layer,
            score=s.score,
            rel_change=s.rel_change,
            n_tensors=sum(1 for r in rows if r.layer == s.layer),
        )
        for s in layers
    ]
    changes, scores = [s.rel_change for s in layers], [s.score for s in layers]
    has_head = any(r.group == "head" for r in rows)
    groups: dict[str, list[ModuleScore]] = {}
    for r in rows:
        if r.layer is None:
            groups.setdefault(r.group if r.group in NON_LAYER_UNITS else "other", []).append(r)
    for unit in NON_LAYER_UNITS:
        ms = groups.get(unit)
        if not ms:
            continue
        nb, nd = sum(m.base_norm**2 for m in ms), sum(m.delta_norm**2 for m in ms)
        rc = math.sqrt(nd / nb) if nb > 0 else (0.0 if nd == 0 else 1.0)
        main = max(ms, key=lambda m: math.prod(m.shape) if m.shape else 1)
        drift = main.row_drift_median if main.row_drift_median is not None else rc
        q = drift_quantile(drift, changes)
        out.append(
            UnitScore(
                unit=unit,
                group=unit,
                score=like_layers_score(drift, changes, scores),
                drift_quantile=q,
                rel_change=rc,
                cos=main.cos,
                tied=unit == "embed" and not has_head,
                n_tensors=len(ms),
                row_drift_median=main.row_drift_median,
                row_drift_p99=main.row_drift_p99,
                swc=main.swc,
                drop=main.drop,
            )
        )
    order = sorted(range(len(out)), key=lambda i: (-out[i].score, i))
    ranks = {i: k + 1 for k, i in enumerate(order)}
    return [u.model_copy(update={"rank": ranks[i]}) for i, u in enumerate(out)]

"""Plannable units: every tensor of the model belongs to exactly one unit, and every unit is scored and ranked.

Units are the transformer layers (`layer.N`, their norms included), the token embeddings (`embed`; also
`lm_head` when the head is tied), an untied `head`, the `final_norm`, and `other` (anything else outside the
blocks, e.g. learned position embeddings). In CPT the units outside the blocks often move most, so a plan that
never restores them loses to a uniform merge (issue 10).

Scale: a layer's score is the mean of its matrices' robust z-scores (within module type). A unit outside the
blocks has no peers of its type, so it is placed by the robust z of its relative change against the layers'
relative changes: an embedding that moved as much as the median layer scores 0, one that moved 5 MADs more
scores 5.
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


def _robust_scale(values: list[float]) -> tuple[float, float]:
    """(median, robust scale) of values; the scale falls back to the std, then to 1."""
    x = torch.tensor(values, dtype=torch.float64)
    med = float(x.median())
    scale = 1.4826 * float((x - med).abs().median())
    if scale <= 1e-12 * max(abs(med), 1e-30):
        scale = float(x.std(unbiased=False)) if x.numel() > 1 else 0.0
    return med, scale if scale > 0 else max(abs(med), 1e-12)


def unit_scores(rows: list[ModuleScore], layers: list[LayerScore]) -> list[UnitScore]:
    """Every unit of the model with its score, jointly ranked (1 = most damaging drift; ties by unit order)."""
    out = [
        UnitScore(unit=f"layer.{s.layer}", group="layer", layer=s.layer, score=s.score, rel_change=s.rel_change,
                  n_tensors=sum(1 for r in rows if r.layer == s.layer))
        for s in layers
    ]  # fmt: skip
    med, scale = _robust_scale([s.rel_change for s in layers]) if layers else (0.0, 1.0)
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
        out.append(
            UnitScore(
                unit=unit,
                group=unit,
                score=(rc - med) / scale,
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

"""Report figures as PNG bytes: the retention–domain trade-off (the paper's Figure 2) and layer scores."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROLE_STYLE = {  # marker, colour, legend label
    "base": ("s", "#444444", "base (B)"),
    "adapted": ("D", "#d62728", "adapted (A, plain CPT)"),
    "baseline": ("^", "#ff7f0e", "baselines"),
    "candidate": ("o", "#1f77b4", "SPEAR-MM candidates"),
}


@dataclass(frozen=True)
class Point:
    """One model on the trade-off plane."""

    name: str
    retention: float
    gain_kept: float
    role: str = "candidate"
    chosen: bool = False


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def coincident(points: Sequence[Point], rel: float = 1e-3) -> list[list[Point]]:
    """Points grouped by position (within `rel` of the plot's span), so models that score the same share one
    label instead of printing their names on top of each other. The chosen point leads its group."""
    span_x = max((p.retention for p in points), default=1.0) - min((p.retention for p in points), default=0.0)
    span_y = max((p.gain_kept for p in points), default=1.0) - min((p.gain_kept for p in points), default=0.0)
    tol_x, tol_y = rel * max(span_x, 1e-9), rel * max(span_y, 1e-9)
    groups: list[list[Point]] = []
    for p in sorted(points, key=lambda q: not q.chosen):
        for g in groups:
            if abs(g[0].retention - p.retention) <= tol_x and abs(g[0].gain_kept - p.gain_kept) <= tol_y:
                g.append(p)
                break
        else:
            groups.append([p])
    return groups


OPERATOR_COLOURS = ("#2ca02c", "#9467bd", "#8c564b")


def tradeoff_png(
    points: Sequence[Point],
    front: Sequence[str] = (),
    title: str = "",
    curve: Sequence = (),
    operators: Mapping[str, Sequence] | None = None,
) -> bytes:
    """Scatter of general retention R (x) against domain gain kept K (y): candidates labelled, baselines
    with their own markers, the Pareto front dashed, the chosen point circled, and the uniform-SLERP curve
    (`curve`: points with t, retention, gain_kept, in t order) as a line labelled with t; each data-aware
    operator's curve (`operators`: name -> points in α order) as a line of its own."""
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    for (name, pts), colour in zip((operators or {}).items(), OPERATOR_COLOURS * 4, strict=False):
        if len(pts) > 1:
            ax.plot(
                [c.retention for c in pts],
                [c.gain_kept for c in pts],
                "-",
                c=colour,
                alpha=0.7,
                lw=1.4,
                label=f"{name} curve (α = base weight)",
                zorder=2,
            )
    if len(curve) > 1:
        ax.plot(
            [c.retention for c in curve],
            [c.gain_kept for c in curve],
            "-",
            c="#ff7f0e",
            alpha=0.6,
            lw=1.4,
            label="uniform SLERP curve (t = base weight)",
            zorder=2,
        )
        for c in curve:
            ax.annotate(
                f"t={c.t:g}",
                (c.retention, c.gain_kept),
                xytext=(-4, -11),
                textcoords="offset points",
                fontsize=7,
                color="#b35900",
                ha="right",
                zorder=5,
            )
    for role, (marker, colour, label) in ROLE_STYLE.items():
        pts = [p for p in points if p.role == role]
        if pts:
            ax.scatter(
                [p.retention for p in pts],
                [p.gain_kept for p in pts],
                marker=marker,
                s=70,
                c=colour,
                label=label,
                zorder=3,
                edgecolors="white",
                linewidths=0.8,
            )
    by_name = {p.name: p for p in points}
    ordered = sorted((by_name[n] for n in front if n in by_name), key=lambda p: p.retention)
    if len(ordered) > 1:
        ax.plot(
            [p.retention for p in ordered],
            [p.gain_kept for p in ordered],
            "--",
            c="#1f77b4",
            alpha=0.5,
            lw=1.2,
            label="Pareto front",
            zorder=2,
        )
    for group in coincident(points):
        p = group[0]
        offset = (12, 9) if any(q.chosen for q in group) else (6, 5)  # clear of the ring around the chosen point
        ax.annotate(
            " = ".join(q.name for q in group),
            (p.retention, p.gain_kept),
            xytext=offset,
            textcoords="offset points",
            fontsize=8.5,
            zorder=5,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75},
        )
    for p in points:
        if p.chosen:
            ax.scatter(
                [p.retention],
                [p.gain_kept],
                s=420,
                facecolors="none",
                edgecolors="#2ca02c",
                linewidths=2.2,
                zorder=4,
                label=f"chosen: {p.name}",
            )
    ax.axvline(1.0, c="grey", lw=0.8, ls=":")
    ax.axhline(1.0, c="grey", lw=0.8, ls=":")
    ax.axhline(0.0, c="grey", lw=0.8, ls=":")
    xs = [p.retention for p in points] + [1.0]
    ys = [p.gain_kept for p in points] + [0.0, 1.0]
    pad_x, pad_y = max(0.02, 0.12 * (max(xs) - min(xs))), max(0.05, 0.12 * (max(ys) - min(ys)))
    ax.set_xlim(min(xs) - pad_x, max(xs) + pad_x)
    ax.set_ylim(min(ys) - pad_y, max(ys) + pad_y)
    ax.set_xlabel("general retention R = score_G(M) / score_G(B)   (higher is better)")
    ax.set_ylabel("domain gain kept K = (D(M) − D(B)) / (D(A) − D(B))")
    ax.set_title(title or "Retention–domain trade-off")
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8, loc="best", framealpha=0.9, markerscale=0.6)
    return _png(fig)


def layer_scores_png(
    records: Sequence[tuple[int, str | None, float]],
    top_k: int | None = None,
    units: Sequence[tuple[str, float]] = (),
) -> bytes:
    """Heatmap of scores per (module type, layer) when modules are given, and a bar chart of layer scores
    (mean over modules) with the `top_k` highest highlighted; `units` (name, score) — the embeddings, head and
    final norm on the layers' scale — are bars after the layers, ranked with them."""
    layers = sorted({r[0] for r in records})
    modules = sorted({r[1] for r in records if r[1] is not None})
    layer_score = {layer: float(np.mean([s for lay, _, s in records if lay == layer])) for layer in layers}
    names = [str(lay) for lay in layers] + [u for u, _ in units]
    values = [layer_score[lay] for lay in layers] + [s for _, s in units]
    ranked = sorted(range(len(names)), key=lambda i: -values[i])
    top = set(ranked[: top_k if top_k is not None else max(1, len(names) // 4)])
    rows = 2 if modules else 1
    fig, axes = plt.subplots(rows, 1, figsize=(max(7.0, 0.28 * len(layers) + 2), 3.2 * rows + 0.6), squeeze=False)
    if modules:
        grid = np.full((len(modules), len(layers)), np.nan)
        for lay, mod, s in records:
            if mod is not None:
                grid[modules.index(mod), layers.index(lay)] = s
        ax = axes[0][0]
        im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_yticks(range(len(modules)), modules, fontsize=8)
        ax.set_xticks(range(len(layers)), [str(lay) for lay in layers], fontsize=7)
        ax.set_xlabel("layer")
        ax.set_title("impact score per module (higher = more damaging drift)")
        fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01)
    ax = axes[-1][0]
    colours = ["#d62728" if i in top else "#1f77b4" if i < len(layers) else "#17becf" for i in range(len(names))]
    xs = [i + (i >= len(layers)) for i in range(len(names))]  # a gap before the units outside the blocks
    ax.bar(xs, values, color=colours)
    ax.set_xticks(xs, names)
    ax.set_xlabel("layer" + (", then the units outside the blocks" if units else ""))
    ax.set_ylabel("score")
    ax.set_title(f"unit scores (red: top {len(top)} by score, restored first)")
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="y", alpha=0.25)
    fig.tight_layout()
    return _png(fig)

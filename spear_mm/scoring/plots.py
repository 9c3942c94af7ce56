"""Figures of a ScoreTable: a layers × module-type heatmap of the combined score, and ranked layer scores."""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path

from spear_mm.io.files import atomic_write_bytes
from spear_mm.scoring.table import ScoreTable

_MODULE_ORDER = ["attn.q", "attn.k", "attn.v", "attn.qkv", "attn.o", "mlp.gate", "mlp.up", "mlp.gate_up", "mlp.down"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path) -> None:
    """PNG bytes renamed into place: a link at `path` is replaced, never written through."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _score_label(table: ScoreTable) -> str:
    unit = "robust z per module type" if table.config.normalize == "robust_z" else "percentile rank per type"
    return f"combined score ({unit}, α={table.config.alpha:g})"


def plot_heatmap(table: ScoreTable, path: str | Path) -> Path:
    """Rows = layers, then the units outside the blocks (embed, head, final_norm); columns = module types and
    the unit score (the layer score, or the joint-ranking score of a unit outside the blocks, rank in the cell)."""
    plt = _plt()
    cells: dict[tuple[int, str], list[float]] = defaultdict(list)
    for m in table.modules:
        if m.score is not None and m.layer is not None:
            cells[(m.layer, m.module)].append(m.score)
    present = {mod for _, mod in cells}
    modules = [m for m in _MODULE_ORDER if m in present] + sorted(present - set(_MODULE_ORDER))
    extra = [u for u in table.units if u.layer is None]
    columns = modules + (["unit score"] if table.units else [])
    n_rows = table.num_layers + len(extra)
    grid = [[float("nan")] * len(columns) for _ in range(n_rows)]
    for (layer, mod), vals in cells.items():
        grid[layer][modules.index(mod)] = sum(vals) / len(vals)
    if table.units:
        for u in table.units:
            row = u.layer if u.layer is not None else table.num_layers + extra.index(u)
            grid[row][-1] = u.score
    height = min(14.0, 2.0 + 0.32 * n_rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + 0.9 * len(columns)), height), dpi=110)
    im = ax.imshow(grid, aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    step = max(1, table.num_layers // 32)
    ticks = list(range(0, table.num_layers, step)) + list(range(table.num_layers, n_rows))
    labels = [str(i) for i in range(0, table.num_layers, step)] + [f"{u.unit} #{u.rank}" for u in extra]
    ax.set_yticks(ticks, labels)
    if extra:
        ax.axhline(table.num_layers - 0.5, color="white", linewidth=1.5)
    ax.set_xlabel("module type")
    ax.set_ylabel("layer / unit")
    ax.set_title(
        f"Impact score α·SWC + (1−α)·|drop| per module\n{Path(table.adapted).name} vs {Path(table.base).name}",
        fontsize=10,
    )
    bar = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.03)
    bar.set_label(_score_label(table), fontsize=8)
    fig.tight_layout()
    _save(plt, fig, path)
    return Path(path)


def _bars(table: ScoreTable) -> list[tuple[str, float, int, bool]]:
    """(label, score, rank, is a layer) of every ranked unit: the layers in order, then embed / head / final norm
    (the joint ranking of scores.json `units`); old layer-only tables give the layers."""
    if table.units:
        return [(u.unit.removeprefix("layer."), u.score, u.rank, u.group == "layer") for u in table.units]
    return [(str(s.layer), s.score, s.rank, True) for s in sorted(table.layers, key=lambda s: s.layer)]


def plot_layer_scores(table: ScoreTable, path: str | Path, highlight: int | None = None) -> Path:
    """Bar per unit (score) — the layers, then the units outside the blocks after a gap —, the joint rank above
    each bar; the top quarter of the units (or the top `highlight`) in a strong colour."""
    plt = _plt()
    bars = _bars(table)
    n = len(bars)
    top = highlight if highlight is not None else max(1, round(0.25 * n))
    xs = [i + (0 if layer else 1) for i, (*_, layer) in enumerate(bars)]  # a gap before the units
    colours = ["#c0392b" if rank <= top else "#7f8c8d" if layer else "#2471a3" for _, _, rank, layer in bars]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.38 * n + 2), 4.2), dpi=110)
    ax.bar(xs, [b[1] for b in bars], color=colours)
    lo, hi = min(0.0, *(b[1] for b in bars)), max(0.0, *(b[1] for b in bars))
    pad = 0.03 * ((hi - lo) or 1.0)
    for x, (_, s, rank, _) in zip(xs, bars, strict=True):
        y = s + pad if s >= 0 else s - pad
        ax.text(x, y, f"#{rank}", ha="center", va="bottom" if s >= 0 else "top", fontsize=7)
    ax.set_ylim(lo - 4 * pad, hi + 5 * pad)
    ax.axhline(0, color="black", linewidth=0.6)
    step = max(1, table.num_layers // 32)
    ticks = [
        (x, label)
        for j, (x, (label, _, _, layer)) in enumerate(zip(xs, bars, strict=True))
        if not layer or j % step == 0
    ]
    ax.set_xticks([x for x, _ in ticks], [label for _, label in ticks], rotation=0, fontsize=7)
    ax.set_xlabel("layer, then the units outside the blocks (placed on the layers' scale: docs/scoring.md)")
    ax.set_ylabel(f"unit score ({table.config.aggregate} of module scores)")
    ax.set_title(f"Unit impact scores, joint rank above each bar (red: top {top} of {n} units)", fontsize=10)
    fig.tight_layout()
    _save(plt, fig, path)
    return Path(path)


def save_figures(table: ScoreTable, out_dir: str | Path) -> None:
    """heatmap.png and layer_scores.png of `table` in `out_dir`."""
    plot_heatmap(table, Path(out_dir) / "heatmap.png")
    plot_layer_scores(table, Path(out_dir) / "layer_scores.png")

"""Render a report given as blocks — ("h1"|"h2"|"p"|"warn", text), ("table", (head, rows)), ("img", name) —
to Markdown and to self-contained HTML, so both formats always say the same thing."""

from __future__ import annotations

import base64
import html
from typing import Any

Block = tuple[str, Any]


def to_markdown(blocks: list[Block], figure_dir: str) -> str:
    """Markdown; figures are referenced as `figure_dir/<name>.png`."""
    out = []
    for kind, x in blocks:
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + x)
        elif kind in ("p", "warn"):
            out.append(("> **warning:** " if kind == "warn" else "") + x)
        elif kind == "table":
            head, body = x
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in body]
            out.append("\n".join(lines))
        elif kind == "img":
            out.append(f"![{x}]({figure_dir}/{x}.png)")
    return "\n\n".join(out) + "\n"


def to_html(blocks: list[Block], figures: dict[str, bytes], title: str) -> str:
    """One self-contained HTML page: inline CSS, figures as base64 data URIs."""
    esc = html.escape
    body = []
    for kind, x in blocks:
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{esc(x)}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{esc(x)}</p>")
        elif kind == "warn":
            body.append(f'<p class="warn"><b>warning:</b> {esc(x)}</p>')
        elif kind == "table":
            head, rows = x
            th = "".join(f"<th>{esc(h)}</th>" for h in head)
            trs = "".join("<tr>" + "".join(f"<td>{esc(c).replace('**', '')}</td>" for c in r) + "</tr>" for r in rows)
            body.append(f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(figures[x]).decode("ascii")
            body.append(f'<img alt="{esc(x)}" src="data:image/png;base64,{data}">')
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%}img[alt=tradeoff]{max-height:62vh}.warn{background:#fff3cd;padding:6px 10px;border-left:4px solid #f0ad4e}"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def predictions_cell(
    pred_distribution: dict[str, int] | None, lls: list[list[float] | None], same_choices: bool
) -> str:
    """The "predictions" cell of a multiple-choice row, readable: `“positive” × 20, “neutral” × 8`.

    When the choices differ per item (ARC), predicted texts are nearly all distinct; what tells something is
    the position picked (a model stuck on one letter), so the cell counts positions: `#1 × 12, #2 × 9`.
    """
    if same_choices:
        top = sorted((pred_distribution or {}).items(), key=lambda kv: (-kv[1], kv[0]))
        text = ", ".join(f"“{k}” × {v}" for k, v in top[:4])
        return text + (f", … {len(top) - 4} more" if len(top) > 4 else "")
    positions: dict[int, int] = {}
    for ll in lls:
        if ll:
            pos = max(range(len(ll)), key=ll.__getitem__) + 1
            positions[pos] = positions.get(pos, 0) + 1
    return "position " + ", ".join(f"#{p} × {n}" for p, n in sorted(positions.items())) if positions else "—"

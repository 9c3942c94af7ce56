"""The report's view of every plannable unit (the layers, the embeddings, the head, the final norm): the joint
ranking from RUN/scores/scores.json `units`, as a table and as bars beside the layers in the score figure."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from spear_mm.report.schema import ReportTable


@dataclass(frozen=True)
class UnitRow:
    """One unit of scores.json `units` (fields that older files lack are None)."""

    unit: str
    group: str
    score: float
    rank: int
    rel_change: float | None = None
    row_drift_median: float | None = None
    drift_quantile: float | None = None
    restore_gain: float | None = None


def read_units(run_dir: Path) -> list[UnitRow]:
    """The units of RUN/scores/scores.json in their stored order (layers first); [] when absent or layer-only."""
    path = run_dir / "scores" / "scores.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return []
    rows = []
    for u in data.get("units", []) if isinstance(data, dict) else []:
        try:
            rows.append(
                UnitRow(
                    str(u["unit"]),
                    str(u.get("group", "")),
                    float(u["score"]),
                    int(u.get("rank", 0)),
                    u.get("rel_change"),
                    u.get("row_drift_median"),
                    u.get("drift_quantile"),
                    u.get("restore_gain"),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return rows


def _g(x: float | None, fmt: str = ".4f") -> str:
    return "—" if x is None else format(x, fmt)


def unit_table(units: list[UnitRow]) -> ReportTable:
    """Every unit by its joint rank, the units outside the blocks included."""
    gains = any(u.restore_gain is not None for u in units)
    head = ["rank", "unit", "score", "relative change", "row drift (median)", "drift quantile among layers"]
    rows = [
        [
            str(u.rank),
            u.unit,
            f"{u.score:.3f}",
            _g(u.rel_change),
            _g(u.row_drift_median),
            _g(u.drift_quantile, ".2f"),
            *([_g(u.restore_gain)] if gains else []),
        ]
        for u in sorted(units, key=lambda u: (u.rank or 10**9, u.unit))
    ]
    text = (
        "Every plannable unit in the joint ranking the presets restore from (rank 1 = most damaging drift). A unit "
        "outside the blocks has no peers of its type: it gets the layers' score at the quantile its drift (median "
        "row drift for embedding/head matrices, else the relative change) takes among the layers' relative changes "
        "(docs/scoring.md)."
    )
    columns = head + (["restore gain (nats)"] if gains else [])
    return ReportTable(title="Units: layers, embeddings, head, final norm", text=text, columns=columns, rows=rows)

"""The run folder as `spear-mm report` reads it: the evaluation results, summary.json (the `RunSummary` of
`spear-mm run`, read once and typed) as the report's `RunInfo`, and the layer scores (read leniently: the CSV or
JSON of `spear-mm analyze`, or a hand-made table)."""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from spear_mm.errors import SpearError, field_errors
from spear_mm.evaluation.metrics import EvalResult
from spear_mm.report.schema import ReportTable, RunSummary

log = logging.getLogger(__name__)
LayerRecords = list[tuple[int, str | None, float]]


@dataclass
class RunInfo:
    """What the report knows of the run: summary.json's, else the defaults of a folder of evaluation results."""

    base: str = "base"
    adapted: str = "adapted"
    chosen: str | None = None
    choice_reason: str = ""
    keep_chance_tasks: bool = False
    excluded: dict[str, str] = field(default_factory=dict)  # chance-level tasks left out of R and K
    baselines: set[str] = field(default_factory=set)
    descriptions: dict[str, str] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)
    title: str = "SPEAR-MM validation report"
    notes: list[str] = field(default_factory=list)
    tables: list[ReportTable] = field(default_factory=list)
    named: set[str] = field(default_factory=set)  # the roles summary.json names ('base', 'adapted')
    front: set[str] | None = None  # the run's Pareto front (None: computed from the results)
    merged: set[str] = field(default_factory=set)  # the models that front was computed over

    @classmethod
    def of(cls, summary: RunSummary | None) -> RunInfo:
        """The report's view of a run's summary (the defaults without one)."""
        if summary is None:
            return cls()
        entries = summary.candidates
        return cls(
            base=summary.base,
            adapted=summary.adapted,
            chosen=summary.chosen,
            choice_reason=summary.choice_reason,
            keep_chance_tasks=summary.keep_chance_tasks,
            baselines={*summary.baselines, *(n for n, e in entries.items() if e.kind == "baseline")},
            descriptions={n: e.description for n, e in entries.items() if e.description},
            costs={n: e.cost_seconds for n, e in entries.items() if e.cost_seconds is not None} | summary.costs,
            title=summary.title,
            notes=list(summary.notes),
            tables=list(summary.tables),
            named={"base", "adapted"},
            front={n for n, e in entries.items() if e.on_front},
            merged=set(entries),
        )


def read_summary(run_dir: Path) -> RunSummary | None:
    """RUN/summary.json as the `RunSummary` `spear-mm run` wrote (None when there is none); any other file there
    is refused, naming the first field that does not fit."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    raw = path.read_bytes()
    try:
        return RunSummary.model_validate_json(raw)
    except ValidationError as exc:
        _refuse_newer(path, raw)
        err = field_errors(exc)[0]
        raise SpearError(
            f"{path}: not the summary.json of a `spear-mm run` ({err.field or 'the file'}: {err.msg}). The report reads it as a "
            "RunSummary (docs/pipeline.md). Run `spear-mm run` again on this folder to rewrite it (finished steps "
            "are reused), or move the file away to report the evaluation results alone."
        ) from None


def _refuse_newer(path: Path, raw: bytes) -> None:
    """A summary.json of a later format (a newer spear-mm wrote it) is refused as such: rewriting it with this
    version is not the fix."""
    try:
        version = json.loads(raw).get("spear_mm_summary")
    except (ValueError, AttributeError):
        return
    known = RunSummary.model_fields["spear_mm_summary"].default
    if isinstance(version, int) and not isinstance(version, bool) and version > known:
        raise SpearError(
            f"{path}: written by a newer spear-mm (summary format {version}; this version reads format {known}). "
            "Report it with that spear-mm (pip install -U spear-mm), or move the file away to report the "
            "evaluation results alone."
        ) from None


def read_results(run_dir: Path) -> dict[str, EvalResult]:
    """Every EvalResult JSON of the run (eval/*.json, else *.json), by model name."""
    folder = run_dir / "eval" if (run_dir / "eval").is_dir() else run_dir
    results: dict[str, EvalResult] = {}
    for path in sorted(folder.glob("*.json")):
        if path.name == "summary.json":
            continue
        try:
            result = EvalResult.load(path)
        except ValueError as exc:
            log.warning("skipping %s: not an evaluation result (%s)", path, str(exc).splitlines()[0])
            continue
        results[result.model or path.stem] = result
    return results


def read_layer_scores(run_dir: Path) -> LayerRecords | None:
    """Layer/module scores from scores/scores.csv (layer, module, score) or scores/scores.json; None if absent."""
    csv_path, json_path = run_dir / "scores" / "scores.csv", run_dir / "scores" / "scores.json"
    rows: list[dict[str, Any]] = []
    if csv_path.is_file():
        with csv_path.open(encoding="utf-8") as f:
            rows = [{k.strip().lower(): v for k, v in r.items() if k} for r in csv.DictReader(f)]
    elif json_path.is_file():
        data = json.loads(json_path.read_text(encoding="utf-8"))
        for key in ("modules", "module_scores", "records", "layers", "layer_scores", "scores"):
            if isinstance(data, dict) and key in data:
                data = data[key]
                break
        if isinstance(data, dict):  # {layer: score}
            data = [{"layer": k, "score": v} for k, v in data.items()]
        rows = [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []
    records: LayerRecords = []
    for r in rows:
        score = r.get("score", r.get("impact", r.get("combined")))
        try:
            layer, value = int(r["layer"]), float(score)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError):
            continue
        module = r.get("module", r.get("module_type")) or None
        records.append((layer, str(module) if module else None, value))
    return records or None

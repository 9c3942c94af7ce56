"""One progress channel: every stage reports `ProgressEvent`s to one callback (recorded here with a list's
append, on pico models), `cli/progress.py`'s `Drawer` is the only thing that draws them, and no module
outside `spear_mm/cli/` imports rich or makes a console of its own."""

from __future__ import annotations

import ast
import io
from collections import defaultdict
from pathlib import Path
from typing import get_args

from planted_pair import open_planted, save_planted_pair
from rich.console import Console

from spear_mm.cli.progress import LOOKS, Drawer, Look
from spear_mm.evaluation import evaluate
from spear_mm.io.checkpoint import Checkpoint
from spear_mm.io.pair import open_pair
from spear_mm.measured.planner import PlannerConfig, _shifted, plan_units
from spear_mm.measured.probe import ProbeEvaluator
from spear_mm.merging.merge import merge
from spear_mm.progress import ProgressEvent, Stage
from spear_mm.scoring.layers import analyze
from spear_mm.statistics.collect import collect_statistics, load_probes
from spear_mm.training.cpt import CptConfig, cpt

PACKAGE = Path(__file__).resolve().parents[1] / "spear_mm"


def _check_counts(events: list[ProgressEvent], stage: str, key=lambda e: "") -> dict[str, list[ProgressEvent]]:
    """Events of `stage` grouped by `key`: each group's done never falls, never passes total, ends at total."""
    groups: dict[str, list[ProgressEvent]] = defaultdict(list)
    for e in events:
        assert e.stage == stage, e
        groups[key(e)].append(e)
    for name, group in groups.items():
        done = [e.done for e in group]
        assert done == sorted(done), (name, done)
        assert all(0 <= e.done <= e.total for e in group), (name, group)
        assert len({e.total for e in group}) == 1, (name, group)
        assert group[-1].done == group[-1].total, (name, group[-1])
    return groups


def test_analyze_reports_every_tensor_scored(tiny_pair):
    events: list[ProgressEvent] = []
    table = analyze(*tiny_pair, workers=1, progress=events.append)
    _check_counts(events, "analyze")
    assert events[-1].total == len(table.modules) == len(events)
    assert sorted(e.label for e in events) == sorted(m.name for m in table.modules)  # the label: the tensor


def test_merge_reports_bytes_written(tiny_pair, tmp_path):
    events: list[ProgressEvent] = []
    report = merge(*tiny_pair, tmp_path / "m", 0.5, out_dtype="bf16", progress=events.append)
    _check_counts(events, "merge")
    assert {e.unit for e in events} == {"bytes"} and len(events) == report.n_tensors
    numel = sum(i.numel for i in Checkpoint.open(tiny_pair[1]).infos.values())
    assert events[-1].total == 2 * numel  # bf16: output bytes, not the fp32 input's


def test_evaluate_reports_the_items_of_every_task(tiny_pair):
    events: list[ProgressEvent] = []
    result = evaluate(tiny_pair[0], "demo", limit=2, name="base", progress=events.append)
    groups = _check_counts(events, "items", key=lambda e: e.label)
    assert set(groups) == {f"base · {t}" for t in result.tasks}  # `<model> · <task>`
    assert all(g[0].done == 0 and g[-1].total == result.tasks[n.split(" · ")[1]].n for n, g in groups.items())


def test_stats_report_each_side_and_cpt_each_optimizer_step(tiny_pair, tmp_path):
    text = tmp_path / "probe.txt"
    text.write_text("Revenue rose 12 percent to 4.2 billion dollars. " * 30)
    pair = open_pair(*tiny_pair)
    events: list[ProgressEvent] = []
    collect_statistics(pair, load_probes(pair.adapted.path, text, text, 256), tmp_path / "s", progress=events.append)
    groups = _check_counts(events, "stats", key=lambda e: e.label)
    assert set(groups) == {"general grams", "domain grams"}
    events.clear()
    config = CptConfig(max_steps=3, seq_len=16, batch_size=2, progress=False, device="cpu", threads=1)
    cpt(tiny_pair[0], [text], tmp_path / "c", config, progress=events.append)
    _check_counts(events, "cpt")
    assert [e.done for e in events] == [1, 2, 3] and events[-1].total == 3


def test_the_measured_planner_reports_probe_evaluations(tmp_path):
    _, pair, probes, scores = open_planted(save_planted_pair(tmp_path))
    events: list[ProgressEvent] = []
    ev = ProbeEvaluator(pair, probes, progress=events.append)
    plan_units(ev, scores.unit_ranking(), PlannerConfig(budget=4))
    assert {e.stage for e in events} == {"planner"} and [e.done for e in events] == list(range(1, len(events) + 1))
    assert all(e.done <= e.total for e in events)
    shifted: list[ProgressEvent] = []  # the second of two searches (an operator after SLERP) continues the count
    _shifted(shifted.append, 10, 1)(ProgressEvent("planner", 3, 8))
    assert shifted == [ProgressEvent("planner", 13, 18)]


def _lines(looks: dict[str, Look], events: list[ProgressEvent]) -> list[str]:
    buf = io.StringIO()
    with Drawer(looks, console=Console(file=buf, width=200)) as draw:
        for e in events:
            draw(e)
    return [line.split(", elapsed")[0] for line in buf.getvalue().splitlines()]


def test_the_drawer_writes_plain_lines_without_a_terminal():
    run = [
        ProgressEvent("analyze", 1, 2, "model.layers.0.mlp.up_proj.weight"),
        ProgressEvent("analyze", 2, 2, "lm_head.weight"),
        ProgressEvent("evaluate", 1, 2),
        ProgressEvent("items", 0, 4, "base · task_a"),
        ProgressEvent("items", 4, 4, "base · task_a"),
        ProgressEvent("items", 0, 2, "adapted · task_a"),
        ProgressEvent("items", 2, 2, "adapted · task_a"),
        ProgressEvent("evaluate", 2, 2),
        ProgressEvent("merge", 269_000_000, 538_000_000, "a", unit="bytes"),
        ProgressEvent("merge", 538_000_000, 538_000_000, "b", unit="bytes"),
    ]
    assert _lines(LOOKS, run) == [
        "score tensors: 2/2 (100%)",  # no tensor names in a log: they are drawn beside a terminal's bar only
        "evaluate models: 1/2 (50%)",  # a line per model
        "base · task_a: 4/4 (100%)",  # one bar relabelled for each model's task
        "adapted · task_a: 2/2 (100%)",
        "evaluate models: 2/2 (100%)",
        "write chosen model (bytes): 538/538 MB (100%)",
    ]
    per_task = LOOKS | {"items": Look(text="{label}", per_label=True)}  # `spear-mm evaluate`: a bar per task
    items = [ProgressEvent("items", d, 2, f"m · {t}") for t in ("a", "b") for d in (0, 1, 2)]
    assert _lines(per_task, items) == ["m · a: 2/2 (100%)", "m · b: 2/2 (100%)"]
    stats = [ProgressEvent("stats", 1, 1, "general grams"), ProgressEvent("stats", 1, 1, "domain grams")]
    assert _lines(LOOKS, stats) == ["stats general grams: 1/1 (100%)", "stats domain grams: 1/1 (100%)"]
    assert _lines(LOOKS, [ProgressEvent("cpt", 3, 3)]) == ["cpt: optimizer steps: 3/3 (100%)"]


def test_the_drawer_draws_rich_bars_on_a_terminal():
    buf = io.StringIO()
    with Drawer(LOOKS, console=Console(file=buf, width=200, force_terminal=True)) as draw:
        draw(ProgressEvent("analyze", 1, 2, "model.layers.0.mlp.up_proj.weight"))
        draw(ProgressEvent("merge", 538_000_000, 538_000_000, "lm_head.weight", unit="bytes"))
    text = buf.getvalue()
    assert "━" in text and "score tensors" in text and "up_proj" in text  # the tensor beside the bar
    assert "538.0/538.0 MB" in text  # bytes drawn as sizes


def _rich_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        names += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        found += [n for n in names if n == "rich" or n.startswith("rich.")]
    return found


def test_rich_is_imported_in_cli_only_and_consoles_made_in_cli_output_only():
    modules = sorted(PACKAGE.rglob("*.py"))
    outside = {str(p.relative_to(PACKAGE)): r for p in modules if "cli" not in p.parts and (r := _rich_imports(p))}
    assert not outside, f"rich outside spear_mm/cli/ (report ProgressEvents instead): {outside}"
    consoles = [
        str(p.relative_to(PACKAGE))
        for p in modules
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "Console"
    ]
    assert set(consoles) == {"cli/output.py"}, consoles  # the CLI's consoles: spear_mm.cli.output


def test_every_stage_has_a_look():
    assert set(LOOKS) == set(get_args(Stage))

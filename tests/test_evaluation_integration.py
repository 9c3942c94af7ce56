"""Every shipped task on the real data of ../shared/data, through the CLI, with --limit 8 on a pico model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spear_mm.cli import app
from spear_mm.evaluation import get_suite
from spear_mm.evaluation.metrics import EvalResult

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data not found at {DATA} (see shared/README.md)")


@needs_data
def test_every_shipped_task_runs_with_limit_8(tiny_pair, tmp_path):
    base, adapted = tiny_pair
    out = tmp_path / "eval"
    args = ["evaluate", str(base), str(adapted), "--suite", "general,domain", "--data-dir", str(DATA),
            "--limit", "8", "--threads", "1", "--batch-size", "8", "-o", str(out), "--base", "base",
            "--adapted", "adapted"]  # fmt: skip
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    shipped = [t.name for s in ("general", "domain") for t in get_suite(s).tasks]
    results = {p.stem: EvalResult.load(p) for p in out.glob("*.json")}
    assert set(results) == {"base", "adapted"}
    for name in shipped:
        a, b = results["base"].tasks[name], results["adapted"].tasks[name]
        assert a.n == 8 and a.total > 8 and 0.0 <= a.score <= 1.0
        assert [i.id for i in a.items] == [i.id for i in b.items]  # same sampled items for both models
        if a.kind == "multiple_choice":
            assert sum(a.pred_distribution.values()) == 8
    # a majority-class baseline only where every item has the same choices (FPB's labels), not for ARC
    assert results["base"].tasks["fpb"].majority_baseline is not None
    assert results["base"].tasks["arc_easy"].majority_baseline is None
    fpb = results["base"].tasks["fpb"].label_distribution
    assert len(fpb) == 3  # stratified: the label-sorted file still gives every label
    assert "undefined" in run.output  # K: a pico "adapted" model gains nothing on the domain tasks
    json.loads((out / "base.json").read_text())  # plain JSON


@needs_data
def test_missing_data_dir_is_a_clear_error(tiny_pair, tmp_path):
    run = CliRunner().invoke(app, ["evaluate", str(tiny_pair[0]), "--data-dir", str(tmp_path), "--limit", "2"])
    assert run.exit_code != 0
    assert "arc_easy" in str(run.exception) and "ARC-Easy-test.jsonl" in str(run.exception)

"""`spear-mm report`: run-folder reading, tables, figures, self-contained HTML."""

from __future__ import annotations

import json
import re

import pytest
from common import run_cli, run_summary
from typer.testing import CliRunner

from spear_mm.cli import app
from spear_mm.errors import SpearError
from spear_mm.evaluation import LoadedTask, MCItem, TaskSpec, TextItem, evaluate
from spear_mm.evaluation.metrics import EvalResult, ItemRecord, TaskResult
from spear_mm.report.build import read_layer_scores, read_results, write_report
from spear_mm.report.schema import ModelEntry
from spear_mm.scoring.layers import analyze

PNG = b"\x89PNG\r\n\x1a\n"


def _result(name: str, arc: float, ppl: float, fpb: float, tok: str = "tok:1") -> EvalResult:
    n = 40
    mc_items = [ItemRecord(id=str(i), correct=i < arc * n, pred="a", gold="a") for i in range(n)]
    ppl_items = [ItemRecord(id=str(i), nll=(i % 3 + 1) * 10 * (ppl / 30) ** 0.1, tokens=10) for i in range(8)]
    tasks = {
        "arc_easy": TaskResult(task="arc_easy", kind="multiple_choice", metric="acc", score=arc, stderr=0.05, n=n,
                               items=mc_items, majority_baseline=0.3, pred_distribution={"a": 30, "b": 10}),
        "wikitext2": TaskResult(task="wikitext2", kind="perplexity", metric="inv_ppl", score=1 / ppl, n=8,
                                metrics={"ppl": ppl}, items=ppl_items),
        "fpb": TaskResult(task="fpb", kind="multiple_choice", group="domain", metric="acc", score=fpb, n=n,
                          items=mc_items),
    }  # fmt: skip
    return EvalResult(model=name, tokenizer=tok, tasks=tasks, seconds=12.0)


def _summary(run_dir, **changes):
    """The summary.json of a run over these results: the fields the report reads."""
    candidates = {
        "uniform-t0.5": ModelEntry(name="uniform-t0.5", kind="baseline", description="uniform SLERP t=0.5"),
        "balanced": ModelEntry(name="balanced", kind="policy", cost_seconds=42.0, on_front=True),
        "conservative": ModelEntry(name="conservative", kind="policy", on_front=True),
        "aggressive": ModelEntry(name="aggressive", kind="policy", on_front=True),
    }
    notes = ["merged with SLERP; LERP fallback on 268 of 272 tensors"]
    fields = dict(chosen="balanced", title="Test run", candidates=candidates, notes=notes)
    return run_summary(run_dir, **{**fields, **changes})


def _run_dir(tmp_path, with_scores: bool = True):
    points = {"base": (0.5, 30, 0.4), "adapted": (0.4, 45, 0.6), "uniform-t0.5": (0.47, 35, 0.55),
              "conservative": (0.44, 40, 0.58), "balanced": (0.48, 33, 0.56), "aggressive": (0.5, 31, 0.47)}  # fmt: skip
    for name, (arc, ppl, fpb) in points.items():
        _result(name, arc, ppl, fpb).save(tmp_path / "eval" / f"{name}.json")
    _summary(tmp_path).save(tmp_path / "summary.json")
    if with_scores:
        (tmp_path / "scores").mkdir()
        rows = [f"{layer},{m},{(layer * 7 + len(m)) % 11 / 10}" for layer in range(12) for m in ("q_proj", "down_proj")]
        (tmp_path / "scores" / "scores.csv").write_text("layer,module,score\n" + "\n".join(rows) + "\n")
    return tmp_path


def test_report_tables_figures_and_self_contained_html(tmp_path):
    run = _run_dir(tmp_path)
    md_path, html_path = write_report(run)
    md, page = md_path.read_text(), html_path.read_text()
    assert "Chosen: balanced" in md and "**balanced** ✓" in md
    assert "uniform-t0.5 | baseline" in md and "| adapted | adapted" in md
    assert "exp(−NLL/token)" in md  # the perplexity choice is documented in the report
    assert "mcnemar-exact" in md and "paired-bootstrap" in md
    assert "Majority" in md or "majority" in md
    assert (run / "report_files" / "tradeoff.png").read_bytes().startswith(PNG)
    assert (run / "report_files" / "layer_scores.png").read_bytes().startswith(PNG)
    assert page.count("data:image/png;base64,") == 2
    assert not re.search(r'src="(?!data:)', page)  # nothing loaded from outside the file
    row = next(line for line in md.splitlines() if line.startswith("| **balanced**"))
    assert f"{(0.48 / 0.5 + 30 / 33) / 2:.3f}" in row  # R: mean of the accuracy ratio and ppl(B)/ppl(M)
    assert "42" in row.split("|")[-2]  # the cost from summary.json


def _front(md: str) -> list[str]:
    return sorted(line.split("|")[1].strip(" *✓") for line in md.splitlines() if "· front |" in line)


def test_report_shows_the_runs_front_and_recomputes_it_for_other_settings(tmp_path):
    run = _run_dir(tmp_path, with_scores=False)
    assert _front(write_report(run)[0].read_text()) == ["aggressive", "balanced", "conservative"]
    only = {n: e.model_copy(update={"on_front": n == "balanced"}) for n, e in _summary(run).candidates.items()}
    _summary(run, candidates=only).save(run / "summary.json")
    assert _front(write_report(run)[0].read_text()) == ["balanced"]  # the run's front, read (not recomputed)
    again = write_report(run, keep_chance_tasks=True)[0].read_text()  # other R and K: the front is computed
    assert _front(again) == ["aggressive", "balanced", "conservative"]


def test_a_summary_json_that_is_not_a_run_summary_is_refused_in_one_paragraph(tmp_path, monkeypatch, capsys):
    run = _run_dir(tmp_path, with_scores=False)
    (run / "summary.json").write_text(json.dumps({"chosen": "balanced", "title": "hand-made"}))
    before = (run / "summary.json").read_bytes()
    code, text = run_cli(monkeypatch, capsys, "report", run)
    assert code == 2 and "Traceback" not in text, text
    assert "summary.json: not the summary.json of a `spear-mm run`" in text and "run_dir" in text
    assert "move the file away" in text and (run / "summary.json").read_bytes() == before
    assert not (run / "report.md").exists()


def test_report_without_scores_or_adapted(tmp_path):
    run = _run_dir(tmp_path, with_scores=False)
    (run / "eval" / "adapted.json").unlink()
    md_path, html_path = write_report(run)
    md = md_path.read_text()
    assert "K and the trade-off plot are omitted" in md and "Layer scores" not in md
    assert "data:image/png" not in html_path.read_text()


def test_report_warns_about_different_tokenizers(tmp_path):
    run = _run_dir(tmp_path, with_scores=False)
    _result("adapted", 0.4, 45, 0.6, tok="other:2").save(run / "eval" / "adapted.json")
    md = write_report(run)[0].read_text()
    assert "different tokenizers" in md


def test_layer_scores_are_read_leniently(tmp_path):
    (tmp_path / "scores").mkdir()
    (tmp_path / "scores" / "scores.json").write_text(json.dumps({"layers": {"0": 0.5, "1": 0.25}}))
    assert read_layer_scores(tmp_path) == [(0, None, 0.5), (1, None, 0.25)]
    (tmp_path / "scores" / "scores.json").write_text(json.dumps([{"layer": 2, "module_type": "q", "score": 1}]))
    assert read_layer_scores(tmp_path) == [(2, "q", 1.0)]
    assert read_layer_scores(tmp_path / "nothing") is None


def test_report_needs_results_and_base(tmp_path):
    with pytest.raises(SpearError, match="no evaluation results"):
        write_report(tmp_path)
    _result("merged", 0.5, 30, 0.5).save(tmp_path / "merged.json")  # results directly in the folder
    assert list(read_results(tmp_path)) == ["merged"]
    with pytest.raises(SpearError, match="base"):
        write_report(tmp_path)


def test_report_cli_on_real_evaluations(tiny_pair, tmp_path):
    """evaluate two real (pico) models, then report through the CLI."""
    items = [MCItem(str(i), f"Question {i}: the central bank", ("held", "dog", "fox"), i % 3) for i in range(6)]
    text = [TextItem("t", "Revenue rose 12 percent to 4.2 billion dollars. The central bank held its rate.")]
    tasks = [
        LoadedTask(TaskSpec(name="gen_mc", kind="multiple_choice", loader="jsonl_mc"), tuple(items), 6),
        LoadedTask(TaskSpec(name="fin_ppl", kind="perplexity", loader="text", group="domain"), tuple(text), 1),
    ]
    for path in tiny_pair:
        evaluate(path, tasks, threads=1).save(tmp_path / "eval" / f"{path.name}.json")
    run = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert run.exit_code == 0, run.output
    assert (tmp_path / "report.html").is_file() and "gen_mc" in (tmp_path / "report.md").read_text()


def test_layer_scores_from_a_real_analyze_folder(tiny_pair, tmp_path):
    """The scores folder written by `spear-mm analyze` (scores.json with per-module rows) is read as is."""
    analyze(*tiny_pair, out_dir=tmp_path / "scores", workers=1)
    records = read_layer_scores(tmp_path)
    assert records and {layer for layer, _, _ in records} == set(range(6))
    top = max(range(6), key=lambda k: sum(s for lay, _, s in records if lay == k))
    assert top in {3, 5}  # the layers the fixture drifts strongly


def test_coincident_points_share_one_label():
    from spear_mm.report.figures import Point, coincident, tradeoff_png

    pts = [
        Point("uniform-t0.5", 0.881, 1.147, "baseline"),
        Point("task-arith-l0.5", 0.881, 1.1470001, "baseline"),
        Point("balanced", 0.755, 0.670, chosen=True),
        Point("adapted", 0.659, 1.0, "adapted"),
    ]
    groups = [[p.name for p in g] for g in coincident(pts)]
    assert groups[0] == ["balanced"]  # the chosen point leads
    assert ["uniform-t0.5", "task-arith-l0.5"] in groups and ["adapted"] in groups and len(groups) == 3
    assert tradeoff_png(pts).startswith(b"\x89PNG")


def test_predictions_cell_is_readable():
    from spear_mm.report.render import predictions_cell

    same = predictions_cell({"neutral": 8, "positive": 20, "negative": 4}, [], same_choices=True)
    assert same == "“positive” × 20, “neutral” × 8, “negative” × 4"
    assert predictions_cell({"212 degrees": 2, "4": 2}, [], True) == "“212 degrees” × 2, “4” × 2"
    lls = [[-1.0, -2.0, -3.0], [-3.0, -1.0, -2.0], [-1.0, -5.0, -9.0], None]
    assert predictions_cell({"x": 1, "y": 1, "z": 1}, lls, same_choices=False) == "position #1 × 2, #2 × 1"


def test_report_leads_with_the_verdict_then_the_figure_then_the_per_task_table(tmp_path):
    md = write_report(_run_dir(tmp_path))[0].read_text()
    verdict = md.split("\n\n")[1]
    assert verdict.startswith("Chosen: balanced — R = ") and "ΔR at equal K against the uniform-SLERP curve" in verdict
    assert "Against the nearest uniform point in K, uniform-t0.5" in verdict and "McNemar p = " in verdict
    order = [md.index(s) for s in ("Chosen: balanced", "![tradeoff]", "## Results", "## Paired tests", "## Notes")]
    assert order == sorted(order)
    assert "n = 200" not in md and "Items per task: n = 8–40." in md  # the run's own n and stderr
    assert "largest accuracy stderr here is 5.0 points (arc_easy)" in md


def test_compare_two_result_files_and_report_against_one_model(tmp_path, monkeypatch):
    import spear_mm.cli.compare

    monkeypatch.setattr(spear_mm.cli.compare.out_console, "width", 200)
    run = _run_dir(tmp_path)
    a, b = run / "eval" / "adapted.json", run / "eval" / "base.json"
    got = CliRunner().invoke(app, ["compare", str(a), str(b)])
    assert got.exit_code == 0, got.output
    assert "adapted (A) against base (B)" in got.output and "McNemar" in got.output and "bootstrap" in got.output
    assert "base better (p < 0.05) on: wikitext2" in got.output  # lower NLL on every item
    # 16 of 40 right against 20: 4 discordant items, McNemar p = 0.125
    cells = r"\s+│\s+".join(
        ["arc_easy \\(general, acc\\)", "0.4000", "0.5000", "-0.1000", "McNemar", "0.125", "40", "—"]
    )
    assert re.search(cells, got.output), got.output
    assert "not distinguishable on: arc_easy, fpb" in got.output
    bad = CliRunner().invoke(app, ["compare", str(a), str(run / "summary.json")])
    assert isinstance(bad.exception, SpearError) and "not an evaluation result" in str(bad.exception)
    CliRunner().invoke(app, ["report", str(run), "--against", "uniform-t0.5"])
    md = (run / "report.md").read_text()
    assert "| balanced | arc_easy | uniform-t0.5 | mcnemar-exact |" in md
    missing = CliRunner().invoke(app, ["report", str(run), "--against", "nope"])
    assert isinstance(missing.exception, SpearError) and "--against 'nope'" in str(missing.exception)

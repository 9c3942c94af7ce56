"""`spear-mm run` end to end on a pico Llama adapted by a real (tiny) CPT run: report, summary, resume, bad input."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest
import yaml
from common import FINANCE, GENERAL, make_tiny_model, make_tokenizer
from typer.testing import CliRunner

from spear_mm import run
from spear_mm.cli import app
from spear_mm.errors import SpearError
from spear_mm.evaluation import evaluate, load_tasks
from spear_mm.pipeline.config import RunConfig
from spear_mm.pipeline.run import _load_tasks
from spear_mm.pipeline.summary import RunSummary
from spear_mm.progress import ProgressEvent

UNIFORM = {f"uniform-t{i / 10:g}" for i in range(1, 10)}  # the uniform curve, t = 0.1 … 0.9
BASELINES = UNIFORM | {"task-arith-l0.5", "task-arith-l0.75", "ties-d0.2"}
POLICIES = {"conservative", "balanced", "aggressive"}


@pytest.fixture(scope="module")
def pair(cpt_pair) -> tuple[Path, Path]:
    """A 4-layer pico Llama pre-trained on general text, then CPT on finance text (tests/common.py)."""
    return cpt_pair


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    """General perplexity + multiple choice, domain perplexity, and one task whose data file is missing."""
    root = tmp_path_factory.mktemp("suite")
    (root / "general.txt").write_text("\n\n".join(GENERAL) + "\n")
    (root / "finance.txt").write_text("\n\n".join(FINANCE[::-1]) + "\n")
    mc = [{"question": "The dog", "choices": ["sleeps in the sun", "bond rating"], "label": 0},
          {"question": "The cat sat on", "choices": ["the credit", "the mat"], "label": 1},
          {"question": "Water boils at", "choices": ["100 degrees", "loan loss"], "label": 0},
          {"question": "Children play in", "choices": ["net income", "the park"], "label": 1}]  # fmt: skip
    (root / "general_mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc))
    tasks = [
        {"name": "gen_ppl", "kind": "perplexity", "loader": "text", "path": "general.txt", "chunk_chars": 0},
        {"name": "gen_mc", "kind": "multiple_choice", "loader": "jsonl_mc", "path": "general_mc.jsonl"},
        {"name": "fin_ppl", "kind": "perplexity", "loader": "text", "group": "domain", "path": "finance.txt",
         "chunk_chars": 0},
        {"name": "fin_missing", "kind": "multiple_choice", "loader": "jsonl_mc", "group": "domain",
         "path": "not_here.jsonl"},
    ]  # fmt: skip
    path = root / "suite.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "tasks": tasks}))
    return path


def _run(pair, suite, out, **kw) -> RunSummary:
    kw = {"suites": str(suite), "data_dir": suite.parent, "threads": 1, **kw}
    return run(*pair, out, **kw)


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "run_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def first(pair, suite, tmp_path_factory) -> tuple[Path, RunSummary, float]:
    out = tmp_path_factory.mktemp("run") / "run"
    started = time.perf_counter()
    summary = _run(pair, suite, out)
    return out, summary, time.perf_counter() - started


def test_run_end_to_end(first, pair, suite) -> None:
    out, summary, _ = first
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    data = json.loads((out / "summary.json").read_text())
    assert set(data["candidates"]) == POLICIES | BASELINES
    assert set(data["baselines"]) == BASELINES | {"adapted"}
    for name, entry in [*data["candidates"].items(), *data["reference"].items()]:
        assert entry["retention"] is not None and entry["gain_kept"] is not None, name
    assert data["reference"]["base"]["retention"] == pytest.approx(1.0)
    assert data["reference"]["base"]["gain_kept"] == pytest.approx(0.0)
    assert data["reference"]["adapted"]["gain_kept"] == pytest.approx(1.0)
    md = (out / "report.md").read_text()
    # the CPT forgot (general perplexity rose) and moving back toward the base restores retention
    r = {n: e["retention"] for n, e in [*data["candidates"].items(), *data["reference"].items()]}
    assert r["adapted"] < 0.9 and r["adapted"] < r["uniform-t0.2"] < r["uniform-t0.5"] < r["uniform-t0.8"]
    # the uniform curve and ΔR at equal K for every plan, with paired tests against the nearest uniform point
    assert [p.name for p in summary.uniform_curve] == ["adapted", *sorted(UNIFORM), "base"]
    assert {c.plan for c in summary.curve_comparisons} == POLICIES
    from spear_mm.evaluation.uniform_curve import r_on_curve

    for c in summary.curve_comparisons:  # every plan's K lies on the curve (adapted K 1 … base K 0): ΔR is defined
        assert c.curve_r is not None, (c.plan, c.gain_kept, summary.uniform_curve)
        assert c.curve_r == pytest.approx(r_on_curve(summary.uniform_curve, c.gain_kept))
        assert c.delta_r == pytest.approx(c.retention - c.curve_r), c.plan
        assert c.nearest in UNIFORM and {t.task for t in c.tests} == {"gen_ppl", "gen_mc", "fin_ppl"}
    assert summary.curve_note in md and "uniform-SLERP curve (ΔR at equal K)" in md
    # every candidate was evaluated on the same items as the base
    base_tasks = json.loads((out / "eval/base.json").read_text())["tasks"]
    base_ids = {t: [i["id"] for i in r["items"]] for t, r in base_tasks.items()}
    for name in POLICIES | BASELINES:
        got = json.loads((out / "eval" / f"{name}.json").read_text())["tasks"]
        assert {t: [i["id"] for i in r["items"]] for t, r in got.items()} == base_ids, name
    # the choice: the best balanced point among the merged models and plain CPT
    assert summary.chosen in POLICIES | BASELINES  # plain CPT forgot (R < 0.9): a merged model balances better
    # the chosen model is written, and equals the one evaluated in memory
    assert [p.name for p in (out / "models").iterdir() if p.is_dir()] == [summary.chosen]
    assert (out / "models" / summary.chosen / "model.safetensors").is_file()
    tasks = load_tasks(str(suite), suite.parent, skip_missing=True)
    on_disk = evaluate(out / "models" / summary.chosen, tasks, threads=1)
    in_memory = json.loads((out / "eval" / f"{summary.chosen}.json").read_text())["tasks"]
    assert {t: r.score for t, r in on_disk.tasks.items()} == pytest.approx(
        {t: r["score"] for t, r in in_memory.items()}, rel=1e-5
    )
    assert summary.pareto_front and set(summary.pareto_front) <= POLICIES | BASELINES
    # cost accounting against the CPT run's cost.json
    cpt_seconds = json.loads((pair[1] / "cost.json").read_text())["wall_seconds"]
    assert summary.cost.cpt_seconds == pytest.approx(cpt_seconds)
    assert summary.cost.ratio == pytest.approx(summary.cost.per_configuration_seconds / cpt_seconds, rel=1e-3)
    assert all(e.cost_seconds and e.cost_seconds > summary.cost.score_seconds for e in summary.candidates.values())
    assert {c.candidate for c in summary.comparisons} == POLICIES
    md = (out / "report.md").read_text()
    assert "Cost accounting" in md and "at equal K and at equal R" in md and "ratio" in md
    # the missing suite file: skipped, and the report says so
    assert set(summary.skipped_tasks) == {"fin_missing"} and "fin_missing" not in summary.tasks
    assert "task fin_missing skipped for every model" in md
    assert sorted(p.name for p in (out / "plans").glob("*.yaml")) == sorted(f"{n}.yaml" for n in POLICIES | BASELINES)


def test_rerun_skips_every_finished_step(first, pair, suite) -> None:
    out, summary, first_seconds = first
    mtimes = {p: p.stat().st_mtime_ns for p in [*(out / "eval").glob("*.json"), out / "scores" / "scores.json"]}
    n_before = len(_events(out))
    again = _run(pair, suite, out)
    new = [e for e in _events(out)[n_before:] if e["step"] != "run" and not e["step"].startswith("plan")]
    assert new and all(e["status"] == "skipped" for e in new), new
    expected = {"analyze", "evaluate base", "evaluate adapted", *[f"evaluate {n}" for n in summary.candidates]}
    expected |= {f"merge {summary.chosen}"} if summary.chosen != "adapted" else set()
    assert expected <= {e["step"] for e in new}
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert again.chosen == summary.chosen and again.candidates == summary.candidates
    assert again.cost.per_configuration_seconds == summary.cost.per_configuration_seconds  # recorded costs reused
    assert again.seconds < first_seconds


def test_edited_plan_is_the_only_thing_re_evaluated(first, pair, suite) -> None:
    out, _, _ = first
    path = out / "plans" / "conservative.yaml"
    plan = yaml.safe_load(path.read_text())
    plan["layers"][0]["t"] = 1.0
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    n_before = len(_events(out))
    _run(pair, suite, out)
    ran = [e["step"] for e in _events(out)[n_before:] if e["status"] == "ran"]
    assert "evaluate conservative" in ran
    assert not [s for s in ran if s.startswith(("evaluate", "analyze")) and s != "evaluate conservative"]


def test_a_sweep_point_equal_to_a_policy_is_evaluated_once(first, pair, suite) -> None:
    out, summary, _ = first
    n_before = len(_events(out))
    again = _run(pair, suite, out, sweep="f=0.25;t=0.7")  # 1 of 4 layers at t = 0.7: the balanced plan
    new = [e for e in _events(out)[n_before:] if e["step"] == "evaluate sweep-f0.25-t0.7"]
    assert [e["status"] for e in new] == ["ran"]
    record = json.loads((out / "eval" / "sweep-f0.25-t0.7.json.step").read_text())
    assert record["extra"]["same_as"] == "balanced"
    twin, balanced = again.candidates["sweep-f0.25-t0.7"], again.candidates["balanced"]
    assert (twin.retention, twin.gain_kept) == (balanced.retention, balanced.gain_kept)
    assert json.loads((out / "eval" / "sweep-f0.25-t0.7.json").read_text())["model"] == "sweep-f0.25-t0.7"


def test_interrupted_run_resumes(pair, suite, tmp_path) -> None:
    out = tmp_path / "run"
    calls = []

    def interrupt(event: ProgressEvent) -> None:
        calls.append((event.stage, event.done))
        if event.stage == "evaluate" and event.done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(pair, suite, out, policies=("balanced",), baselines=False, sweep="f=0.5;t=0.5,1", progress=interrupt)
    saved = sorted(p.stem for p in (out / "eval").glob("*.json"))
    assert saved == ["adapted", "balanced", "base"] and not (out / "summary.json").exists()
    n_before = len(_events(out))
    summary = _run(pair, suite, out, policies=("balanced",), baselines=False, sweep="f=0.5;t=0.5,1")
    ran = sorted(e["step"] for e in _events(out)[n_before:] if e["status"] == "ran" and e["step"].startswith("eval"))
    assert ran == ["evaluate sweep-f0.5-t0.5", "evaluate sweep-f0.5-t1"]
    assert set(summary.candidates) == {"balanced", "sweep-f0.5-t0.5", "sweep-f0.5-t1"}
    assert (out / "report.html").is_file()
    # no uniform curve without baselines: no ΔR against the adapted–base chord, no "above the curve" choice
    assert summary.curve_comparisons == [] and "above the uniform curve" not in summary.choice_rule
    assert summary.curve_note.startswith("No uniform-SLERP curve was evaluated")
    assert "ΔR vs uniform" not in _table_text(summary)


def test_missing_suite_file_warns(tiny_pair, suite, tmp_path, caplog) -> None:
    pair = tiny_pair  # refused before any work: no CPT pair needed (that keeps the test out of `slow`)
    with caplog.at_level(logging.WARNING):
        tasks, skipped = _load_tasks(RunConfig(base="b", adapted="a", suites=str(suite), data_dir=str(suite.parent)))
    assert [t.name for t in tasks] == ["gen_ppl", "gen_mc", "fin_ppl"] and set(skipped) == {"fin_missing"}
    assert "skipping task fin_missing" in caplog.text and "not_here.jsonl" in caplog.text
    with pytest.raises(SpearError, match="no task to evaluate"):
        run(*pair, tmp_path / "r", suites=str(suite), data_dir=tmp_path / "empty")
    assert not (tmp_path / "r").exists()


def test_different_families_fail_before_any_work(tiny_pair, tmp_path) -> None:
    pair = tiny_pair  # refused before any work: no CPT pair needed (that keeps the test out of `slow`)
    tok = make_tokenizer()
    other = tmp_path / "qwen"
    make_tiny_model("qwen2", vocab_size=len(tok), num_hidden_layers=4).save_pretrained(other)
    with pytest.raises(SpearError, match="not the same architecture"):
        run(pair[0], other, tmp_path / "r", suites="demo")
    assert not (tmp_path / "r").exists()
    with pytest.raises(SpearError, match="overlaps the input"):
        run(*pair, pair[1] / "run", suites="demo")


def test_run_yaml_repeats_the_run_and_flags_override_it(first, tmp_path) -> None:
    """RUN/run.yaml is the resolved RunConfig: `run --config RUN/run.yaml` re-runs it (everything resumed), a flag
    overrides the file, and a misspelt key is an error naming the file and the key."""
    out, summary, _ = first
    saved = RunConfig.build(out / "run.yaml")
    assert saved.out == str(out) and saved.threads == 1 and saved.policies == ["conservative", "balanced", "aggressive"]
    n_before = len(_events(out))
    result = CliRunner().invoke(app, ["run", "--config", str(out / "run.yaml"), "--target-retention", "0.5"])
    assert result.exit_code == 0, result.output
    new = _events(out)[n_before:]
    assert not [e for e in new if e["status"] == "ran" and e["step"].startswith(("analyze", "evaluate"))]
    assert RunConfig.build(out / "run.yaml").target_retention == 0.5  # the flag won, and was kept
    data = json.loads((out / "summary.json").read_text())
    assert data["target_retention"] == 0.5 and data["choice_rule"].startswith("most K among R")
    bad = tmp_path / "bad.yaml"
    bad.write_text((out / "run.yaml").read_text() + "polices: [balanced]\n")
    result = CliRunner().invoke(app, ["run", "--config", str(bad)])
    assert result.exit_code != 0 and not (tmp_path / "r").exists()
    with pytest.raises(SpearError, match=r"bad.yaml: polices: Extra inputs are not permitted\. Fields: base"):
        RunConfig.build(bad)


def test_cli_run_prints_table_and_report(first, pair, suite) -> None:
    out, summary, _ = first
    args = ["run", str(pair[0]), str(pair[1]), "-o", str(out), "--suite", str(suite), "--data-dir", str(suite.parent)]
    result = CliRunner().invoke(app, [*args, "--threads", "1", "--target-retention", "0.5"])
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output and "uniform-t0.5" in result.output
    data = json.loads((out / "summary.json").read_text())
    assert data["target_retention"] == 0.5 and data["choice_rule"].startswith("most K among R")
    entries = {**data["candidates"], "adapted": data["reference"]["adapted"]}
    meeting = {n: e["gain_kept"] for n, e in entries.items() if e["retention"] >= 0.5}
    assert meeting, "the pico pair has models with R >= 0.5"
    assert meeting[data["chosen"]] == max(meeting.values())
    bad = CliRunner().invoke(app, ["run", str(pair[0]), str(pair[1]), "-o", str(out), "--sweep", "x"])
    assert bad.exit_code != 0


def test_keep_all_writes_every_candidate_and_a_plain_rerun_keeps_only_the_chosen(first, pair, suite) -> None:
    out, _, _ = first
    summary = _run(pair, suite, out, keep_all=True)
    folders = {p.name for p in (out / "models").iterdir() if p.is_dir()}
    assert folders == set(summary.candidates)
    summary = _run(pair, suite, out)
    assert {p.name for p in (out / "models").iterdir() if p.is_dir()} == {summary.chosen} - {"adapted"}


@pytest.mark.slow
def test_process_executor_gives_the_same_results(first, pair, suite, tmp_path) -> None:
    """Candidates evaluated in spawned worker processes (jobs pickled, models merged there) match in-process."""
    _, local, _ = first
    summary = _run(
        pair, suite, tmp_path / "run", policies=("balanced",), baselines=False, executor="process", workers=2
    )
    got = summary.candidates["balanced"]
    assert (got.retention, got.gain_kept) == pytest.approx((local.candidates["balanced"].retention,
                                                            local.candidates["balanced"].gain_kept))  # fmt: skip
    workers = {json.loads((tmp_path / "run/eval" / f"{n}.json").read_text())["worker"] for n in ("balanced",)}
    assert all(not w.endswith(f":{os.getpid()}") for w in workers)


def test_choice_rule() -> None:
    from spear_mm.pipeline.selection import balance, choose

    points = {"a": (0.95, 0.40), "b": (0.91, 0.70), "c": (0.80, 0.95), "d": (1.30, 0.10), "e": (None, 0.9)}
    assert choose(points, 0.9).chosen == "b"  # the most K among R ≥ 0.9
    missed = choose(points, 1.5)
    assert missed.chosen == "d" and missed.met_target is False and "no model reaches" in missed.reason
    assert choose(points).chosen == "c"  # harmonic mean of clipped R and K: c 0.869 > b 0.791 > a 0.563
    assert balance(1.3, 0.1) == balance(1.0, 0.1)  # R above 1 buys nothing
    assert choose({"x": (None, None)}).chosen is None
    assert choose({"u": (1.0, 1.39), "t": (1.0, 1.40)}).chosen == "t"  # clipped tie: the dominating one


def test_comparison_with_baselines() -> None:
    from spear_mm.pipeline.selection import compare_to_baselines

    base = {"uniform-t0.5": (0.9, 0.5), "adapted": (0.7, 1.0)}
    (cmp,) = compare_to_baselines({"balanced": (0.85, 0.6), **base}, base, ["balanced"])
    assert (cmp.equal_k_baseline, cmp.delta_r) == ("uniform-t0.5", pytest.approx(-0.05))
    assert (cmp.equal_r_baseline, cmp.delta_k) == ("uniform-t0.5", pytest.approx(0.1))
    assert cmp.dominated_by == []


def test_sweep_grammar() -> None:
    from spear_mm.pipeline.candidates import parse_sweep

    assert parse_sweep("f=0.1,0.5;t=0.7") == {"fractions": (0.1, 0.5), "t": (0.7,)}
    assert parse_sweep(True)["t"] == (0.5, 0.7, 0.9) and parse_sweep(None) is None
    for bad, match in (("0.1,0.5", "write it as"), ("f=0.1;x=2", "unknown key"), ("t=1.5", r"\(0, 1\]")):
        with pytest.raises(SpearError, match=match):
            parse_sweep(bad)


def test_run_with_the_measured_planner_and_a_probe_ranking_resumes(pair, suite, tmp_path) -> None:
    """`measured` plans from probes (general: sampled from the base), presets rank by restore gain, the
    planner's cost is in the cost table, and a re-run skips the planner (its plan and evaluations are cached)."""
    from spear_mm.planning.plan import Plan
    from spear_mm.scoring.table import ScoreTable

    out = tmp_path / "run"
    kw = dict(policies=("balanced", "measured"), domain_probe=suite.parent / "finance.txt", planner={"budget": 4},
              uniform_grid=(0.3, 0.6), rank_by="restore_gain")  # fmt: skip
    summary = _run(pair, suite, out, **kw)
    assert {"balanced", "measured", "uniform-t0.3", "uniform-t0.6"} <= set(summary.candidates)
    plan = Plan.load(out / "plans" / "measured.yaml")
    assert plan.provenance.policy == "measured" and plan.measurement.budget == 4
    assert plan.measurement.evaluations >= 2 + 2 * 7  # base, adapted, each of 7 units (4 layers + 3) at 2 t
    assert list((out / "planner").glob("base-samples-*.jsonl"))  # the general probe, sampled from the base
    scores = ScoreTable.load(out / "scores")
    assert all(u.restore_gain is not None for u in scores.units)  # ranked by measured restore gain
    assert Plan.load(out / "plans" / "balanced.yaml").provenance.params["rank_by"] == "restore_gain"
    stage = next(s for s in summary.stages if s.name.startswith("measured planner"))
    assert stage.status == "ran" and "probe evaluations" in stage.detail
    md = (out / "report.md").read_text()
    assert "Measured planner: probes, spend and every unit's t" in md and "effect at t=0.5" in md
    assert "ΔR vs uniform" in _table_text(summary)  # the CLI's table: each plan against the curve
    assert "measured planner's probes cost" in md and {c.plan for c in summary.curve_comparisons} == {
        "balanced",
        "measured",
    }
    again = _run(pair, suite, out, **kw)
    stage = next(s for s in again.stages if s.name.startswith("measured planner"))
    assert (
        stage.status == "skipped" and again.candidates["measured"].retention == summary.candidates["measured"].retention
    )
    # sub-layer units: the planner runs again (new settings), its report table lists both halves of each layer
    _run(pair, suite, out, **(kw | {"planner": {"budget": 2, "granularity": "sublayer"}}))
    assert Plan.load(out / "plans" / "measured.yaml").provenance.params["granularity"] == "sublayer"
    md = (out / "report.md").read_text()
    assert "| layer.0.attn |" in md and "| layer.0.mlp |" in md


def _table_text(summary) -> str:
    from rich.console import Console

    from spear_mm.cli.run import results_table

    console = Console(width=200, record=True)
    console.print(results_table(summary))
    return console.export_text()


def test_a_limit_8_choice_that_ties_with_a_uniform_point_says_so(pair, tmp_path) -> None:
    """At --limit 8 the balance rule picks a plan on a one-item R difference (McNemar p = 1): the noise check
    hands the choice to the simpler uniform point, and the report's first paragraph says why. The plan is fixed
    (layer 0 and the head at t = 0.7), so the scenario does not depend on how the presets rank units."""
    from spear_mm.planning.plan import Plan

    plan = Plan.from_layer_list([0.7, 0.0, 0.0, 0.0]).model_copy(update={"head": 0.7})
    path = plan.save(tmp_path / "plans-in" / "head_and_first.yaml")
    out = tmp_path / "run"
    summary = run(*pair, out, suites="demo", limit=8, policies=[str(path), "aggressive"], threads=1)
    assert summary.first_pick in POLICIES | {"head_and_first"} and summary.chosen in UNIFORM, summary.choice_reason
    assert f"not distinguishable from {summary.chosen}" in summary.choice_reason
    assert "McNemar p = 1, n = 8" in summary.choice_reason
    # the finance multiple-choice task is at chance for base and adapted: flagged, left out of K
    assert list(summary.excluded_tasks) == ["demo_finance_mc"]
    assert "demo_finance_mc" not in summary.entry("head_and_first").gain_kept_per_task
    verdict = (out / "report.md").read_text().split("\n\n")[1]
    assert verdict.startswith(f"Chosen: {summary.chosen} — R = ") and "uniform-SLERP curve" in verdict
    assert f"not distinguishable from {summary.chosen}" in verdict
    kept = run(*pair, tmp_path / "kept", suites="demo", limit=8, policies=["balanced"], threads=1,
               keep_chance_tasks=True)  # fmt: skip
    assert kept.excluded_tasks == {} and "demo_finance_mc" in kept.entry("balanced").gain_kept_per_task

"""Hostile review of issue 19's new surfaces (run/plan flags generated from the config, the registries, suites as
YAML, the report read from summary.json): each case is a defect found by trying them, fixed, and kept fixed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from common import run_summary

from spear_mm.errors import SpearError
from spear_mm.evaluation.metrics import EvalResult, ItemRecord, TaskResult
from spear_mm.measured.objective import REFINEMENTS, register_refinement
from spear_mm.merging.methods import METHODS, MergeMethod, register
from spear_mm.scoring.layers import analyze

DOMAIN = "Revenue rose 12 percent to 4.2 billion dollars. The central bank held its rate steady. " * 12


@pytest.fixture(scope="module")
def scored(tiny_pair, tmp_path_factory) -> Path:
    """The tiny pair's scores folder (read-only for the cases), with a domain probe beside it."""
    root = tmp_path_factory.mktemp("scored19")
    analyze(*tiny_pair, root / "scores", workers=1)
    (root / "domain.txt").write_text(DOMAIN)
    return root


# -- --planner-uniform-seeds: every seed is a t in [0, 1] (1.5 and -3 were probed as SLERP extrapolations) -------
def test_run_refuses_uniform_seeds_outside_0_1(tiny_pair, scored, tmp_path, cli, untouched):
    check = untouched(*tiny_pair, scored)
    out = tmp_path / "run"
    code, text = cli(
        "run",
        *tiny_pair,
        "-o",
        out,
        "--policies",
        "measured",
        "--domain-probe",
        scored / "domain.txt",
        "--planner-uniform-seeds",
        "1.5,-3",
    )
    check()
    assert code == 2 and "planner.uniform_seeds" in text and "less than or equal to 1" in text, text
    assert "Traceback" not in text and not out.exists()


def test_plan_names_the_uniform_seeds_flag(tiny_pair, scored, tmp_path, cli, untouched):
    check = untouched(*tiny_pair, scored)
    plan = tmp_path / "plan.yaml"
    code, text = cli(
        "plan",
        scored / "scores",
        "-o",
        plan,
        "--policy",
        "measured",
        "--domain-probe",
        scored / "domain.txt",
        "--planner-uniform-seeds",
        "0.5,1.5",
    )
    check()
    assert code == 2 and "--planner-uniform-seeds 1.5: Input should be less than or equal to 1" in text, text
    assert not plan.exists() and not plan.with_name("plan.yaml.probes").exists()


# -- an empty path is refused, not read as the working folder (`-o ''` wrote the run into the cwd) ---------------
@pytest.mark.parametrize("flag", ["-o", "--data-dir"])
def test_run_refuses_an_empty_path(tiny_pair, tmp_path, cli, untouched, monkeypatch, flag):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text("the user's file")
    check = untouched(*tiny_pair, tmp_path)
    args = ("-o", tmp_path / "run") if flag != "-o" else ()
    code, text = cli("run", *tiny_pair, *args, flag, "", "--suite", "demo")
    check()
    assert code == 2 and "an empty path" in text and "Traceback" not in text, text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


# -- registries: a broken plugin class is refused when it registers, in one sentence naming it --------------------
def test_a_method_without_a_name_is_refused():
    with pytest.raises(SpearError, match="has no `name`"):

        @register
        class Nameless(MergeMethod):
            summary = "no name"

    assert all(cls.__name__ != "Nameless" for cls in METHODS.values())


def test_a_method_whose_options_its_constructor_does_not_take_is_refused():
    with pytest.raises(SpearError, match=r"declares options \['gain'\] that its constructor does not take"):

        @register
        class NoGain(MergeMethod):
            name = "no_gain_19"
            options = ("gain",)

    assert "no_gain_19" not in METHODS


def test_a_refinement_cannot_replace_a_built_in():
    before = REFINEMENTS["tiers"]
    with pytest.raises(SpearError, match="refinement 'tiers' is registered twice"):
        register_refinement("tiers")(lambda *args: None)
    assert REFINEMENTS["tiers"] is before
    register_refinement("tiers")(before)  # the same function again (a module imported twice) is fine


# -- suites: a missing suite .yaml says so ---------------------------------------------------------------------------
def test_a_missing_suite_file_is_named(tiny_pair, tmp_path, cli):
    code, text = cli("evaluate", tiny_pair[0], "--suite", tmp_path / "nosuch.yaml", "-o", tmp_path / "ev")
    assert code == 2 and f"suite file {tmp_path / 'nosuch.yaml'}: no such file" in text, text
    assert not (tmp_path / "ev").exists()


def _run_folder(run: Path, **changes) -> Path:
    """A run folder with two models' results and a summary.json whose JSON is changed by `changes`."""
    for name, acc in (("base", 0.6), ("adapted", 0.4)):
        items = [ItemRecord(id=str(i), correct=i < acc * 10, pred="a", gold="a") for i in range(10)]
        task = TaskResult(task="mc", kind="multiple_choice", metric="acc", score=acc, n=10, items=items)
        EvalResult(model=name, tokenizer="tok:1", tasks={"mc": task}, seconds=1.0).save(run / "eval" / f"{name}.json")
    data = json.loads(run_summary(run).model_dump_json()) | changes
    (run / "summary.json").write_text(json.dumps(data))
    return run


# -- report: a summary.json of a later format is refused as such (not "run again to rewrite it") -------------------
def test_a_newer_summary_format_asks_for_a_newer_spear_mm(tmp_path, cli, untouched):
    run = _run_folder(tmp_path / "run", spear_mm_summary=2, a_later_field={"x": 1})
    check = untouched(run)
    code, text = cli("report", run, "-o", tmp_path / "rep")
    check()
    assert code == 2 and "written by a newer spear-mm (summary format 2" in text and "Traceback" not in text, text


def test_unknown_keys_of_the_current_format_are_read(tmp_path, cli):
    """Forward compatibility within a format: a key this version does not know is ignored, not refused."""
    run = _run_folder(tmp_path / "run", a_later_field=[1, 2])
    code, text = cli("report", run, "-o", tmp_path / "rep")
    assert code == 0 and (tmp_path / "rep" / "report.md").is_file(), text


# -- progress into a pipe: the drawer's lines only (transformers' "Loading weights" tqdm bars wrote \r-lines) -----
def test_evaluate_into_a_pipe_writes_no_carriage_returns(tiny_pair, tmp_path, cli):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # as a fresh process has it (another command may have switched it off)
    code, text = cli("evaluate", *tiny_pair, "--suite", "demo", "--limit", "2", "-o", tmp_path / "ev")
    assert code == 0, text
    assert "\r" not in text and "\x1b[" not in text and "Loading weights" not in text, text
    assert text.count("base · demo_general_mc: 2/2") == 1, text  # one line per model's task, not a flood


# -- policies: an unknown name, a repeated one and a missing plan file are refused before any scoring -------------
@pytest.mark.parametrize(
    "policies, expected",
    [
        ("balanced,nonexist", "unknown policy 'nonexist'"),
        ("balanced,balanced", "two candidates would be named 'balanced'"),
        ("plans/balanced.yaml,balanced", "two candidates would be named 'balanced'"),
        ("missing.yaml", "missing.yaml: plan file not found"),
    ],
)
def test_run_refuses_bad_policies_before_scoring(tiny_pair, tmp_path, cli, untouched, policies, expected):
    check = untouched(*tiny_pair)
    out = tmp_path / "run"
    code, text = cli("run", *tiny_pair, "-o", out, "--suite", "demo", "--policies", policies)
    check()
    assert code == 2 and expected in text and "Traceback" not in text, text
    assert not (out / "scores").exists() and "score tensors" not in text


def test_run_refuses_an_operator_given_twice(tiny_pair, tmp_path, cli, untouched):
    """'regmean=0.5;regmean=0.7' kept the last curve only, silently."""
    (tmp_path / "d.txt").write_text(DOMAIN)
    check = untouched(*tiny_pair)
    out = tmp_path / "run"
    args = ("--operators", "regmean=0.5;regmean=0.7", "--domain-probe", tmp_path / "d.txt")
    code, text = cli("run", *tiny_pair, "-o", out, "--suite", "demo", *args)
    check()
    assert code == 2 and "operators: 'regmean' is given twice" in text and not out.exists(), text


def test_a_sweep_flag_that_does_not_parse_names_both_spellings(tiny_pair, tmp_path, cli):
    """run.yaml's `sweep: true` is `--sweep default` on the command line: the message says so."""
    code, text = cli("run", *tiny_pair, "-o", tmp_path / "run", "--sweep", "true")
    assert code == 2 and "'f=0.1,0.25,0.5;t=0.5,0.7,0.9', or 'default'" in text, text
    assert not (tmp_path / "run").exists()


# -- the planner's two objectives: --planner-probe-recovery ignored --planner-max-domain-loss silently -------------
def test_plan_refuses_both_planner_objectives(scored, tmp_path, cli, untouched):
    check = untouched(scored)
    plan = tmp_path / "plan.yaml"
    code, text = cli(
        "plan",
        scored / "scores",
        "-o",
        plan,
        "--policy",
        "measured",
        "--domain-probe",
        scored / "domain.txt",
        "--planner-probe-recovery",
        "0.5",
        "--planner-max-domain-loss",
        "0.2",
    )
    check()
    assert code == 2 and text.startswith("error: max_domain_loss and probe_recovery are two objectives"), text
    assert "give one (--planner-max-domain-loss or --planner-probe-recovery)" in text and not plan.exists()


def test_run_refuses_both_planner_objectives(tiny_pair, scored, tmp_path, cli):
    out = tmp_path / "run"
    code, text = cli(
        "run",
        *tiny_pair,
        "-o",
        out,
        "--policies",
        "measured",
        "--domain-probe",
        scored / "domain.txt",
        "--planner-probe-recovery",
        "0.5",
        "--planner-max-domain-loss",
        "0.2",
    )
    assert code == 2 and "max_domain_loss and probe_recovery are two objectives" in text and not out.exists(), text


def test_run_with_no_suite_and_no_tasks_says_so(tiny_pair, tmp_path, cli, untouched):
    """--suite '' said 'the data of every task of '' is missing ()': there was no task, not missing data."""
    check = untouched(*tiny_pair)
    code, text = cli("run", *tiny_pair, "-o", tmp_path / "run", "--suite", "", "--no-baselines")
    check()
    assert code == 2 and "--suite '' names no suite and no lm-eval task names are given" in text, text
    assert not (tmp_path / "run" / "scores").exists()


# -- suite files are read like run configs: a key given twice is refused, a YAML error is one paragraph ----------
@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "name: s\ntasks:\n  - name: t\n    kind: perplexity\n    loader: text\n    path: a.txt\n    path: b.txt\n",
            "line 7: key 'path' is given twice (first on line 6)",
        ),
        ("name: [\n", "not valid YAML (while parsing a flow node expected the node content"),
    ],
)
def test_a_suite_file_is_read_strictly(tiny_pair, tmp_path, cli, untouched, text, expected):
    suite = tmp_path / "in" / "suite.yaml"
    suite.parent.mkdir()
    suite.write_text(text)
    check = untouched(suite.parent)
    code, out = cli("evaluate", tiny_pair[0], "--suite", suite, "-o", tmp_path / "ev")
    check()
    assert code == 2 and f"suite file {suite}" in out and expected in out, out


# -- nan / inf in a number option: refused as not finite (nan read as "not ≤ 1", inf cost accepted) ---------------
@pytest.mark.parametrize("flag", ["--scoring-alpha", "--target-retention", "--cpt-cost-seconds", "--planner-t-mid"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_run_refuses_a_number_that_is_not_finite(tiny_pair, tmp_path, cli, untouched, flag, value):
    check = untouched(*tiny_pair)
    out = tmp_path / "run"
    extra = ["--policies", "measured", "--domain-probe", tmp_path / "d.txt"] if flag.startswith("--planner") else []
    code, text = cli("run", *tiny_pair, "-o", out, flag, value, *extra)
    check()
    assert code == 2 and "finite number" in text and "Traceback" not in text, text
    assert not out.exists()


# -- plan validate: a plan whose methods read probe statistics, without `statistics:`, says what merge will need ----
def test_plan_validate_notes_the_statistics_a_data_aware_plan_needs(tiny_pair, tmp_path, cli):
    plan = tmp_path / "plan.yaml"
    plan.write_text("num_layers: 6\nmethod: regmean\nlayers: [{layer: 0, t: 0.5}]\n")
    code, text = cli("plan", "validate", plan, tiny_pair[0])
    assert code == 0 and "--stats STATS" in text and "regmean" in text, text

"""The README's 5-minute tour, run as written: every `spear-mm …` line of its code block, in order, through the
real CLI, on a pico pair. The hub id of the tour is served offline from a private hub cache (tests/tour_env.py);
the only substitution is lm-eval's hub-hosted tasks (`--tasks arc_easy,hellaswag`), which become two local
registered tasks, since no data set may be downloaded here."""

from __future__ import annotations

import importlib.util
import shlex

import pytest
from common import run_cli, run_summary
from test_lm_eval_tasks import write_tasks
from tour_env import TOUR_HUB_ID, tour_commands, tour_workspace

from spear_mm.evaluation.metrics import EvalResult


def test_the_readme_tour_has_the_documented_steps():
    commands = tour_commands()
    verbs = [shlex.split(c)[1] for c in commands]
    assert verbs[:3] == ["inspect", "analyze", "plan"] and verbs[-2:] == ["report", "ls"]
    evaluate = next(c for c in commands if " -o run/eval " in c)
    assert "--base" in evaluate and "--adapted" in evaluate


@pytest.mark.slow  # end to end: every command of the tour, lm-eval included (~15-25 s on 2 cores)
def test_the_readme_tour_runs_as_written(tiny_pair, tmp_path, monkeypatch, capsys):
    cache = tour_workspace(tmp_path, tiny_pair)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    has_lm_eval = importlib.util.find_spec("lm_eval") is not None
    if has_lm_eval:
        include = write_tasks(tmp_path / "lm-eval-tasks")
    for command in tour_commands():
        args = shlex.split(command)[1:]
        if "--tasks" in args:
            if not has_lm_eval:
                continue
            i = args.index("--tasks")
            args[i + 1 : i + 2] = ["pico_mc,pico_fin", "--lm-eval-include", str(include)]
        code, text = run_cli(monkeypatch, capsys, *args)
        assert code == 0, f"{command}\n{text}"
    results = {p.stem: EvalResult.load(p) for p in (tmp_path / "run" / "eval").glob("*.json")}
    assert {r.role for r in results.values()} == {"base", "adapted", None}
    assert results[TOUR_HUB_ID.split("/")[1]].role == "base"
    report = (tmp_path / "run" / "report.md").read_text()
    assert "SmolLM2-135M" in report and "merged" in report
    for name in ("plan.yaml", "merged/config.json", "scores/scores.json"):
        assert (tmp_path / name).is_file(), name


def test_evaluate_refuses_a_role_name_that_no_result_has(tiny_pair, tmp_path, monkeypatch, capsys):
    _, adapted = tiny_pair
    out = tmp_path / "eval"
    code, text = run_cli(monkeypatch, capsys, "evaluate", adapted, "--suite", "demo", "--base", "base", "-o", out)
    assert code == 2 and "--base 'base'" in text and "named adapted" in text and not out.exists()


def test_report_roles_come_from_the_flag_then_summary_then_evaluate(tmp_path):
    from spear_mm.evaluation.metrics import TaskResult
    from spear_mm.report.build import write_report

    def result(name: str, score: float, role: str | None = None) -> None:
        task = TaskResult(task="t", kind="multiple_choice", metric="acc", score=score, n=4)
        EvalResult(model=name, role=role, tasks={"t": task}).save(tmp_path / "eval" / f"{name}.json")

    result("base", 0.5)  # named like the default, but evaluate marked another model as the base
    result("orig", 0.8, "base")
    result("cpt", 0.6, "adapted")

    def roles() -> dict[str, str]:  # model -> role, from the results table of report.md
        cells = [[c.strip() for c in r.split("|")[1:-1]] for r in (tmp_path / "report.md").read_text().splitlines()]
        return {c[0]: c[1] for c in cells if len(c) == 7 and c[1] in ("base", "adapted", "candidate")}

    write_report(tmp_path)
    assert roles() == {"orig": "base", "cpt": "adapted", "base": "candidate"}
    run_summary(tmp_path, base="base", adapted="cpt").save(tmp_path / "summary.json")  # the run's roles
    write_report(tmp_path)
    assert roles() == {"base": "base", "cpt": "adapted", "orig": "candidate"}
    write_report(tmp_path, base="orig", adapted="base")  # the flags win
    assert roles() == {"orig": "base", "base": "adapted", "cpt": "candidate"}

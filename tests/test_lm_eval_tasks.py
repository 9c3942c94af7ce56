"""lm-eval's own task registry (`--backend lm-eval --tasks ...`) on in-memory models: tasks registered from
local YAMLs over local JSON datasets through lm-eval's `TaskManager(include_path=...)`, results in the same
`EvalResult` (per-sample logs -> items -> paired tests), and an offline dataset miss failing before model work."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from common import run_cli

from spear_mm.evaluation.lm_eval_tasks import SHIPPED_EQUIVALENTS, task_manager
from spear_mm.evaluation.metrics import EvalResult, compare

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None, reason="lm_eval not installed (pip install 'spear-mm[lm-eval]')"
)

WORDS = ["four", "five", "water", "net income", "the lazy dog", "12 percent", "billion dollars"]


def _mc_rows(n: int, offset: int) -> list[dict]:
    return [
        {
            "question": f"item {i}: the central bank and revenue?",
            "choices": WORDS[(i + offset) % 4 :][:3],
            "label": i % 3,
        }
        for i in range(n)
    ]


def write_tasks(folder: Path) -> Path:
    """Four tasks of three output types, each a YAML next to its JSON-lines dataset."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "pico_mc": _mc_rows(9, 0),
        "pico_fin": _mc_rows(6, 2),
        "pico_gen": [{"q": f"What is {i} plus {i}?", "a": str(2 * i)} for i in range(3)],
        "pico_ppl": [{"text": "Revenue rose 12 percent to 4.2 billion dollars. " * (1 + i)} for i in range(3)],
    }
    mc = {
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "label",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    extra = {
        "pico_mc": mc,
        "pico_fin": mc,
        "pico_gen": {
            "output_type": "generate_until",
            "doc_to_text": "Q: {{q}}\nA:",
            "doc_to_target": "{{a}}",
            "generation_kwargs": {"until": ["\n"], "do_sample": False, "max_gen_toks": 4},
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        },
        "pico_ppl": {
            "output_type": "loglikelihood_rolling",
            "doc_to_text": "",
            "doc_to_target": "{{text}}",
            "metric_list": [{"metric": "word_perplexity"}, {"metric": "bits_per_byte"}],
        },
    }
    for name, rows in data.items():
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        config = {
            "task": name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(path.resolve())}},
            "test_split": "test",
            **extra[name],
        }
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


@pytest.fixture(scope="module")
def include(tmp_path_factory) -> Path:
    """One task folder for the module: lm-eval's task index (~20 s to build) is then built once."""
    return write_tasks(tmp_path_factory.mktemp("lm-eval-tasks"))


@pytest.fixture()
def cli(monkeypatch, capsys):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return lambda *args: run_cli(monkeypatch, capsys, *args)


def test_evaluate_runs_registered_tasks_into_the_same_result(tiny_pair, tmp_path, cli, include):
    out = tmp_path / "eval"
    code, text = cli(
        "evaluate", tiny_pair[1], "--backend", "lm-eval", "--tasks", "pico_mc,pico_gen,pico_ppl",
        "--domain-tasks", "pico_fin", "--lm-eval-include", include, "-o", out, "--batch-size", "4",
    )  # fmt: skip
    assert code == 0, text
    result = json.loads((out / "adapted.json").read_text())
    tasks = result["tasks"]
    assert set(tasks) == {"pico_mc", "pico_fin", "pico_gen", "pico_ppl"} and result["backend"] == "lm-eval"
    assert {t: tasks[t]["group"] for t in tasks} == {
        "pico_mc": "general", "pico_gen": "general", "pico_ppl": "general", "pico_fin": "domain",
    }  # fmt: skip
    mc = tasks["pico_mc"]
    assert mc["kind"] == "multiple_choice" and mc["n"] == 9 and len(mc["items"]) == 9 and mc["metric"] == "acc"
    for item in mc["items"]:  # lm-eval's per-sample verdict agrees with its logged log-likelihoods
        lls = item["lls"]
        assert len(lls) == 3 and item["correct"] == (item["pred"] == item["gold"])
    assert mc["score"] == pytest.approx(sum(i["correct"] for i in mc["items"]) / 9)
    assert mc["majority_baseline"] is None  # the choices differ per item
    gen = tasks["pico_gen"]
    assert gen["metric"] == "exact_match" and all(isinstance(i["output"], str) for i in gen["items"])
    ppl = tasks["pico_ppl"]
    assert ppl["kind"] == "perplexity" and ppl["metric"] == "inv_ppl" and 0 < ppl["score"] < 1
    assert ppl["metrics"]["ppl"] == pytest.approx(1 / ppl["score"]) and all(i["tokens"] > 0 for i in ppl["items"])
    assert "lm-eval" in mc["source"] and "pico_mc" in text


def test_limit_is_a_seeded_sample(tiny_pair, tmp_path, cli, include):
    ids = []
    for seed in (0, 0, 1):
        out = tmp_path / f"eval{len(ids)}"
        args = ["--tasks", "pico_mc", "--lm-eval-include", include, "--limit", "4", "--seed", seed, "-o", out]
        code, text = cli("evaluate", tiny_pair[1], *args)
        assert code == 0, text
        task = json.loads((out / "adapted.json").read_text())["tasks"]["pico_mc"]
        assert task["n"] == 4 and task["total"] == 9
        ids.append([i["id"] for i in task["items"]])
    assert ids[0] == ids[1] and ids[0] != ids[2] and ids[0] != ["0", "1", "2", "3"]


def test_the_shipped_suites_counterparts_are_registered(include):
    registered = set(task_manager(str(include)).all_tasks)
    assert set(SHIPPED_EQUIVALENTS.values()) <= registered and "pico_mc" in registered


def test_an_include_folder_without_task_names_is_refused(tiny_pair, tmp_path, cli, include):
    for command in (["evaluate", tiny_pair[1]], ["run", *tiny_pair, "-o", tmp_path / "run"]):
        code, text = cli(*command, "--lm-eval-include", include)
        assert code == 2 and "--lm-eval-include needs --tasks" in text
    assert not (tmp_path / "run").exists()


def test_an_unknown_task_is_named(tiny_pair, tmp_path, cli, include):
    code, text = cli("evaluate", tiny_pair[1], "--tasks", "pico_mcc", "--lm-eval-include", include)
    assert code == 2 and "'pico_mcc'" in text and "lm_eval ls tasks" in text


def test_a_name_from_both_the_suite_and_lm_eval_is_refused(tiny_pair, tmp_path, cli):
    include = write_tasks(tmp_path / "tasks")
    (include / "clash.yaml").write_text((include / "pico_mc.yaml").read_text().replace("pico_mc", "demo_finance_mc", 1))
    code, text = cli(
        "evaluate", tiny_pair[1], "--suite", "demo", "--tasks", "demo_finance_mc", "--lm-eval-include", include
    )
    assert code == 2 and "'demo_finance_mc'" in text and "both from --suite and from lm-eval" in text


def test_offline_dataset_miss_fails_before_any_model_work(tmp_path, cli, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "ds-cache"))
    include = tmp_path / "tasks"
    include.mkdir()
    config = {
        "task": "absent_hub_task",
        "dataset_path": "spear-mm-tests/absent-dataset",
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{q}}",
        "doc_to_choice": "{{c}}",
        "doc_to_target": 0,
    }
    (include / "absent.yaml").write_text(yaml.safe_dump(config))
    # the model does not exist either: the dataset check must come first
    code, text = cli("evaluate", tmp_path / "no-model", "--tasks", "absent_hub_task", "--lm-eval-include", include)
    assert code == 2, text
    assert "'absent_hub_task'" in text and "HF_DATASETS_OFFLINE=1" in text and "datasets cache" in text
    assert "no-model" not in text


@pytest.mark.slow
def test_run_with_registered_tasks_gives_r_k_and_paired_tests(tiny_pair, tmp_path, cli, include):
    args = ["run", *tiny_pair, "-o", tmp_path / "run", "--tasks", "pico_mc", "--domain-tasks", "pico_fin",
            "--lm-eval-include", include, "--policies", "balanced", "--no-baselines", "--batch-size", "4"]  # fmt: skip
    code, text = cli(*args)
    assert code == 0, text
    written = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run" / "eval").glob("*.json")}
    code, text = cli(*args)  # a re-run resumes: the same task names give the same keys, nothing re-evaluated
    assert code == 0, text
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run" / "eval").glob("*.json")} == written
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["tasks"] == {"pico_mc": "general", "pico_fin": "domain"}
    assert summary["reference"]["base"]["retention"] == pytest.approx(1.0)
    assert summary["candidates"]["balanced"]["retention"] is not None
    evals = {p.stem: EvalResult.load(p) for p in (tmp_path / "run" / "eval").glob("*.json")}
    assert {"base", "adapted", "balanced"} <= set(evals)
    assert all(e.backend == "lm-eval" for e in evals.values())
    test = compare(evals["balanced"], evals["base"], "pico_mc")  # paired on lm-eval's per-sample logs
    assert test.test == "mcnemar-exact" and test.n == 9
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Paired tests on the same items" in report and "pico_fin" in report

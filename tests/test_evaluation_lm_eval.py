"""The built-in back end and lm-evaluation-harness's HF back end agree on the same prompts."""

from __future__ import annotations

import importlib.util

import pytest
import yaml
from common import make_tiny_model, make_tokenizer

from spear_mm.evaluation import GenItem, LoadedTask, MCItem, TaskSpec, TextItem, evaluate
from spear_mm.evaluation.lm_eval_backend import export_tasks, task_dict

needs_lm_eval = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None, reason="lm_eval not installed (pip install 'spear-mm[lm-eval]')"
)

WORDS = ["four", "five", "net income", "its policy rate", "the lazy dog", "water", "12 percent", "billion dollars"]


def _tasks() -> list[LoadedTask]:
    mc = [
        MCItem(
            f"q{i}",
            f"Question: item {i}, the central bank and revenue?\nAnswer:",
            tuple(WORDS[i % 5 : i % 5 + 3]),
            i % 3,
        )
        for i in range(10)
    ]
    mc.append(MCItem("trail", "Revenue rose to ", ("4.2 billion", "the fox"), 0))  # trailing space in the context
    text = [TextItem("t0", "The quick brown fox jumps over the lazy dog. " * 6), TextItem("t1", "Net income rose.")]
    gen = [GenItem("g0", "Q: What is two plus two?\nA:", "4"), GenItem("g1", "Q: Revenue rose?\nA:", "12")]
    specs = [
        TaskSpec(name="mc", kind="multiple_choice", loader="jsonl_mc"),
        TaskSpec(name="ppl", kind="perplexity", loader="text"),
        TaskSpec(name="gen", kind="generation", loader="jsonl_gen", max_gen_toks=8),
    ]
    return [LoadedTask(s, tuple(items), len(items)) for s, items in zip(specs, (mc, text, gen), strict=True)]


@needs_lm_eval
def test_builtin_and_lm_eval_agree_on_the_same_prompts(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)  # not a git repository: lm-eval's `git describe` must not print git's complaint
    tok = make_tokenizer()
    model = make_tiny_model("llama", vocab_size=len(tok))
    tasks = _tasks()
    ours = evaluate(model, tasks, tok, batch_size=4, max_length=64)
    theirs = evaluate(model, tasks, tok, batch_size=4, max_length=64, backend="lm-eval")
    assert theirs.backend == "lm-eval"
    mc_a, mc_b = ours.tasks["mc"], theirs.tasks["mc"]
    assert mc_a.metrics["acc"] == mc_b.metrics["acc"] and mc_a.metrics["acc_norm"] == mc_b.metrics["acc_norm"]
    for a, b in zip(mc_a.items, mc_b.items, strict=True):
        assert a.lls == pytest.approx(b.lls, abs=1e-3)
    ppl_a, ppl_b = ours.tasks["ppl"], theirs.tasks["ppl"]
    assert ppl_a.metrics["bits_per_byte"] == pytest.approx(ppl_b.metrics["bits_per_byte"], rel=1e-4)
    assert [i.output for i in ours.tasks["gen"].items] == [i.output for i in theirs.tasks["gen"].items]
    assert "not a git repository" not in capfd.readouterr().err


def test_task_dicts_use_absolute_named_splits(tmp_path):
    paths = export_tasks(_tasks(), tmp_path)
    config = yaml.safe_load(paths[0].read_text())
    assert config["dataset_path"] == "json" and config["test_split"] == "test"
    (data_file,) = config["dataset_kwargs"]["data_files"].values()
    assert data_file.startswith("/") and (tmp_path / "mc.jsonl").resolve().as_posix() == data_file
    assert task_dict(_tasks()[1], tmp_path / "ppl.jsonl")["output_type"] == "loglikelihood_rolling"

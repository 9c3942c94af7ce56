"""Discoverability: `spear-mm ls ...`, `spear-mm plan validate PLAN MODEL`, choices listed by `--help` (and kept
in step with the library's names), and `-v/--verbose` after the subcommand."""

from __future__ import annotations

import logging
from typing import get_args

import pytest
from common import run_cli

from spear_mm.cli import choices, normalise_argv
from spear_mm.evaluation.runner import BACKENDS
from spear_mm.evaluation.suites import SUITES
from spear_mm.executors import KINDS
from spear_mm.merging.methods import METHODS
from spear_mm.planning.plan import Plan
from spear_mm.planning.policies import POLICY_RULES
from spear_mm.scoring.table import RankBy


@pytest.fixture()
def cli(monkeypatch, capsys):
    return lambda *args: run_cli(monkeypatch, capsys, *args)


def test_choice_enums_match_the_library():
    assert tuple(e.value for e in choices.Executor) == KINDS
    assert tuple(e.value for e in choices.Backend) == BACKENDS
    assert tuple(e.value for e in choices.RankBy) == get_args(RankBy)
    assert "measured" in POLICY_RULES and POLICY_RULES["measured"].rule is None  # the planner, not make_plan
    assert tuple(METHODS)[:6] == ("slerp", "lerp", "task_arithmetic", "ties", "regmean", "fisher")


@pytest.mark.parametrize(
    ("what", "expect"),
    [
        ("suites", [*SUITES, "arc_easy", "reuters_ppl"]),
        ("tasks", ["arc_challenge", "multiple_choice", "perplexity", "inv_ppl", "embedded", "gsm8k_cot"]),
        ("policies", ["conservative", "balanced", "aggressive", "top-k", "fraction", "measured", "t=0.7"]),
        ("methods", ["slerp", "lerp", "task_arithmetic", "ties", "0.9995", "density", "linear"]),
        ("refinements", ["tiers", "kinds", "units", "efficiency tier", "unit kind"]),
        ("architectures", ["llama", "qwen2", "gpt2", "attn.q"]),
    ],
)
def test_ls(cli, what, expect):
    code, text = cli("ls", what)
    assert code == 0, text
    for word in expect:
        assert word in text, (word, text)
    if what == "policies":  # presets rank every unit, not only the layers
        assert "top 25% units" in text and "highest-ranked units" in text and " layers by" not in text


def test_ls_unknown_lists_the_choices(cli):
    code, text = cli("ls", "bogus")
    assert code == 2 and "suites" in text and "architectures" in text


@pytest.mark.parametrize(
    ("command", "listed"),
    [
        ("run", ["local|process|ray", "builtin|lm-eval", "cpu|cuda|cuda:N", "all|plans", "bf16|fp16|fp32"]),
        ("analyze", ["local|process|ray", "mean|max", "robust_z|rank", "mp|spectrum", "auto|float32|float64"]),
        ("plan", ["conservative|balanced|aggressive|uniform|custom|top-k|fraction", "slerp|lerp|task_arithmetic|ties"]),
        ("evaluate", ["builtin|lm-eval", "cpu|cuda|cuda:N", "bf16|fp16|fp32"]),
        ("merge", ["cpu|cuda|cuda:N", "bf16|fp16|fp32"]),
    ],
)
def test_help_lists_the_choices(cli, monkeypatch, command, listed):
    monkeypatch.setenv("COLUMNS", "400")
    code, text = cli(command, "--help")
    assert code == 0
    for choice in listed:
        assert choice in text.replace(" ", ""), (choice, text)


def test_bad_choice_is_rejected_before_work(tiny_pair, tmp_path, cli):
    base, adapted = tiny_pair
    code, text = cli("analyze", base, adapted, "-o", tmp_path / "s", "--executor", "threads")
    assert code == 2 and "local" in text and "process" in text and not (tmp_path / "s").exists()


def test_verbose_after_the_subcommand(tiny_pair, cli):
    assert normalise_argv(["inspect", "m", "-v"]) == ["-v", "inspect", "m"]
    assert normalise_argv(["plan", "validate", "p.yaml", "m"]) == ["plan-validate", "p.yaml", "m"]
    assert normalise_argv(["plan", "scores", "-o", "p.yaml"]) == ["plan", "scores", "-o", "p.yaml"]
    for args in (("inspect", tiny_pair[0], "-v"), ("--verbose", "inspect", tiny_pair[0])):
        code, text = cli(*args)
        assert code == 0 and "model_type=llama" in text
        assert logging.getLogger("spear_mm").getEffectiveLevel() == logging.DEBUG  # spear-mm's lines only
    code, _ = cli("inspect", tiny_pair[0])
    assert logging.getLogger("spear_mm").getEffectiveLevel() == logging.INFO


def test_plan_validate(tiny_pair, tmp_path, cli):
    _, adapted = tiny_pair
    good = Plan.from_layer_list([0, 0, 0, 0.7, 0, 1.0]).save(tmp_path / "good.yaml")
    code, text = cli("plan", "validate", good, adapted)
    assert code == 0, text
    # layer 3 at t=0.7 merges its 9 tensors, layer 5 at t=1 restores 9; the other 4 layers keep 36
    assert "layer 36 9 9" in text and "embed 1 0 0" in text, text
    assert "plan OK" in text and "nothing was merged" in text
    assert not any(p.name.endswith(".safetensors") for p in tmp_path.iterdir())


def test_plan_validate_names_the_mismatch(tiny_pair, tmp_path, cli):
    _, adapted = tiny_pair
    short = Plan.from_layer_list([0, 0.5, 0, 0]).save(tmp_path / "short.yaml")
    code, text = cli("plan", "validate", short, adapted)
    assert code == 2 and "short.yaml" in text and "4 layers" in text and "has 6" in text
    typo = tmp_path / "typo.yaml"
    typo.write_text("num_layers: 6\nlayers:\n  - layer: 2\n    t: 0.5\n    modules: {attn.qq: 1.0}\n")
    code, text = cli("plan", "validate", typo, adapted)
    assert code == 2 and "'attn.qq'" in text and "attn.q" in text and "layer 2" in text
    code, text = cli("plan", "validate", tmp_path / "absent.yaml", adapted)
    assert code == 2 and "absent.yaml" in text

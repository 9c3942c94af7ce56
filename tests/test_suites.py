"""Suites as data: the shipped suites are YAML package data, read by the same loader as a user's suite file."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

from spear_mm.errors import SpearError
from spear_mm.evaluation import load_tasks
from spear_mm.evaluation.suites import DATA, DEMO_DATA, SUITES, get_suite, load_suite_file

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_suites_are_yaml_files_in_the_package_data():
    assert {n: p.relative_to(DATA).as_posix() for n, p in SUITES.items()} == {
        "demo": "suites/demo.yaml",
        "domain": "suites/domain.yaml",
        "general": "suites/general.yaml",
    }
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["spear_mm"]
    for path in SUITES.values():  # a wheel ships them: the package-data globs cover every suite file
        rel = path.relative_to(DATA.parent).as_posix()
        assert any(fnmatch.fnmatch(rel, p) for p in patterns), rel
        assert get_suite(path.stem) == load_suite_file(path)  # the user's loader, the same schema


def test_shipped_suites_keep_their_tasks_in_order():
    names = {n: [(t.name, t.kind, t.loader, t.group) for t in get_suite(n).tasks] for n in SUITES}
    assert names["general"] == [
        ("arc_easy", "multiple_choice", "arc", "general"),
        ("arc_challenge", "multiple_choice", "arc", "general"),
        ("gsm8k", "generation", "gsm8k", "general"),
        ("wikitext2", "perplexity", "wikitext", "general"),
    ]
    assert names["domain"] == [
        ("fpb", "multiple_choice", "fpb", "domain"),
        ("reuters_topic", "multiple_choice", "reuters_topic", "domain"),
        ("reuters_ppl", "perplexity", "reuters_text", "domain"),
    ]
    assert names["demo"] == [
        ("demo_general_mc", "multiple_choice", "jsonl_mc", "general"),
        ("demo_finance_mc", "multiple_choice", "jsonl_mc", "domain"),
        ("demo_finance_ppl", "perplexity", "text", "domain"),
    ]
    assert get_suite("general").tasks[0].args == {"subset": "ARC-Easy"}
    assert get_suite("demo").tasks[2].chunk_chars == 0


def test_the_demo_suite_reads_the_embedded_files_without_a_data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing relative to the working directory
    specs = get_suite("demo").tasks
    assert [t.path for t in specs] == [
        str(DEMO_DATA / f) for f in ("general_mc.jsonl", "finance_mc.jsonl", "finance_heldout.txt")
    ]
    loaded = load_tasks("demo")
    assert [(t.name, t.total) for t in loaded][:2] == [("demo_general_mc", 128), ("demo_finance_mc", 128)]
    assert loaded[2].total > 0


def test_a_suite_data_dir_is_relative_to_its_file(tmp_path, monkeypatch):
    (tmp_path / "suites" / "data").mkdir(parents=True)
    (tmp_path / "suites" / "data" / "notes.txt").write_text("first note.\n\nsecond note.\n", encoding="utf-8")
    suite = tmp_path / "suites" / "mine.yaml"
    suite.write_text(
        "name: mine\ngroup: domain\ndata_dir: data\ntasks:\n"
        "  - {name: notes, kind: perplexity, loader: text, path: notes.txt, chunk_chars: 0}\n"
        f"  - {{name: abs, kind: perplexity, loader: text, path: {tmp_path / 'elsewhere.txt'}}}\n"
    )
    monkeypatch.chdir(tmp_path)
    notes, absolute = get_suite(str(suite)).tasks
    assert notes.path == str((tmp_path / "suites" / "data" / "notes.txt").resolve())
    assert absolute.path == str(tmp_path / "elsewhere.txt")  # an absolute path is kept as written
    (task,) = load_tasks([notes], data_dir=tmp_path / "ignored")
    assert task.total == 2

    suite.write_text("data_dir: nowhere\ntasks: []\n")
    with pytest.raises(SpearError, match=r"mine\.yaml: data_dir 'nowhere' is not a folder"):
        get_suite(str(suite))


def test_a_task_of_a_known_kind_is_one_yaml_edit(tmp_path):
    """docs/evaluation.md: a shipped suite file with one more task entry is a working suite."""
    (tmp_path / "qa.jsonl").write_text('{"question": "2 + 2?", "choices": ["3", "4"], "label": 1}\n')
    text = SUITES["general"].read_text()
    text += "  - {name: my_qa, kind: multiple_choice, loader: jsonl_mc, path: qa.jsonl}\n"
    edited = tmp_path / "general.yaml"
    edited.write_text(text)
    specs = get_suite(str(edited)).tasks
    assert [t.name for t in specs] == [*(t.name for t in get_suite("general").tasks), "my_qa"]
    (task,) = load_tasks([specs[-1]], data_dir=tmp_path)
    assert task.items[0].choices == ("3", "4")


def test_a_bad_data_dir_is_one_paragraph_from_the_cli(tiny_pair, tmp_path, monkeypatch, capsys):
    from common import digest, run_cli

    suite = tmp_path / "mine.yaml"
    suite.write_text("data_dir: [1, 2]\ntasks:\n  - {name: t, kind: perplexity, loader: text, path: t.txt}\n")
    before = digest(tiny_pair[1], tmp_path)
    code, text = run_cli(monkeypatch, capsys, "evaluate", tiny_pair[1], "--suite", suite, "-o", tmp_path / "e")
    assert code == 2 and "data_dir [1, 2] is not a folder" in text and "Traceback" not in text, text
    assert digest(tiny_pair[1], tmp_path) == before and not (tmp_path / "e").exists()

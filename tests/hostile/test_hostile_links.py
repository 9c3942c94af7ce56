"""Issue 20, items 1–3: every file a command reads is an input (probes, plans, configs), every output path is
checked before any work, links inside a resumable output folder never lead a write into an input, undecodable
files there are named, and `plan` replaces nothing without --force. All through the real CLI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import copy_pair

from spear_mm.scoring.layers import analyze


@pytest.fixture(scope="module")
def scored(tiny_pair, tmp_path_factory) -> Path:
    """Scores of the shared pair (read-only)."""
    out = tmp_path_factory.mktemp("scored") / "scores"
    analyze(*tiny_pair, out)
    return out


@pytest.fixture()
def probes(tmp_path) -> Path:
    folder = tmp_path / "probes"
    folder.mkdir()
    (folder / "d2.txt").write_text("Revenue rose 12 percent to 4.2 billion dollars in the quarter.\n" * 40)
    (folder / "g.txt").write_text("The cat sat on the mat and looked out of the window at the rain.\n" * 40)
    return folder


# -- item 1: every file read is an input; every output checked first -------------------------------------------
@pytest.mark.parametrize("target", ["-o d2", "-o g", "--export-freeze d2"])
def test_plan_never_writes_its_probe_files(scored, probes, tmp_path, cli, untouched, target):
    check = untouched(probes)
    option, name = target.split()
    out = ["-o", tmp_path / "p.yaml"] if option != "-o" else []
    code, text = cli("plan", scored, "--policy", "measured", "--domain-probe", probes / "d2.txt",
                     "--general-probe", probes / "g.txt", *out, option, probes / f"{name}.txt")  # fmt: skip
    check()
    assert code == 2 and "never writes into or over an input" in text and f"{name}.txt" in text, text
    assert not (tmp_path / "p.yaml").exists()


def test_plan_into_the_base_is_refused_before_the_planner_writes_its_cache(tiny_pair, scored, probes, tmp_path, cli,
                                                                           untouched):  # fmt: skip
    base = copy_pair(tiny_pair, tmp_path / "pair")[0]
    check = untouched(base, probes)
    code, text = cli("plan", scored, "--policy", "measured", "--domain-probe", probes / "d2.txt",
                     "--base", base, "--adapted", tiny_pair[1], "-o", base / "plan.yaml")  # fmt: skip
    check()
    assert code == 2 and "never writes into or over an input" in text, text
    assert sorted(p.name for p in base.iterdir()) == sorted(p.name for p in tiny_pair[0].iterdir())  # no .probes/


def test_report_into_a_model_folder_is_refused(tiny_pair, tmp_path, cli, untouched):
    base = copy_pair(tiny_pair, tmp_path / "pair")[0]
    run = tmp_path / "run"
    assert cli("evaluate", base, "--suite", "demo", "--limit", "2", "-o", run / "eval")[0] == 0
    check = untouched(base, run / "eval")
    for out in (base, base / "sub"):
        code, text = cli("report", run, "-o", out)
        assert code == 2 and "model" in text and str(base) in text, text
    check()
    assert not (base / "report.md").exists() and not (base / "sub").exists()
    assert cli("report", run, "-o", tmp_path / "elsewhere")[0] == 0  # a plain folder is fine


def test_merge_force_onto_the_folder_holding_its_plan_is_refused(tiny_pair, scored, tmp_path, cli, untouched):
    mpl = tmp_path / "MPL"
    mpl.mkdir()
    assert cli("plan", scored, "-o", mpl / "plan.yaml")[0] == 0
    check = untouched(mpl)
    code, text = cli("merge", *tiny_pair, "--plan", mpl / "plan.yaml", "-o", mpl, "--force")
    check()
    assert code == 2 and "never writes into or over an input" in text and "plan.yaml" in text, text


# -- item 2: links inside a resumable output folder --------------------------------------------------------------
def test_analyze_refuses_a_scores_folder_with_a_link_to_the_base_weights(tiny_pair, tmp_path, cli, untouched):
    base, adapted = copy_pair(tiny_pair, tmp_path / "pair")
    check = untouched(base, adapted)
    s2 = tmp_path / "S2"
    s2.mkdir()
    (s2 / "heatmap.png").symlink_to(base / "model.safetensors")
    code, text = cli("analyze", base, adapted, "-o", s2)
    check()
    assert code == 2 and "heatmap.png" in text and "never writes through a link" in text, text


def test_links_inside_the_folder_are_replaced_not_written_through(tiny_pair, tmp_path, cli, untouched):
    s = tmp_path / "S"
    s.mkdir()
    (s / "mine.txt").write_text("kept")
    (s / "layer_scores.png").symlink_to(s / "mine.txt")  # inside the folder: allowed, but never written through
    check = untouched(*tiny_pair, kind="inputs")
    code, text = cli("analyze", *tiny_pair, "-o", s)
    check()
    assert code == 0, text
    assert (s / "mine.txt").read_text() == "kept"
    assert not (s / "layer_scores.png").is_symlink() and (s / "layer_scores.png").read_bytes()[:4] == b"\x89PNG"


def test_run_refuses_a_run_folder_whose_report_links_to_the_base_config(tiny_pair, tmp_path, cli, untouched):
    base, adapted = copy_pair(tiny_pair, tmp_path / "pair")
    check = untouched(base, adapted)
    run2 = tmp_path / "RUN2"
    run2.mkdir()
    (run2 / "report.md").symlink_to(base / "config.json")
    code, text = cli("run", base, adapted, "-o", run2, "--suite", "demo", "--limit", "2", "--policies", "balanced",
                     "--no-baselines")  # fmt: skip
    check()
    assert code == 2 and "report.md" in text and "link" in text, text


def test_evaluate_refuses_a_results_folder_whose_result_links_to_an_input(tiny_pair, tmp_path, cli, untouched):
    base, adapted = copy_pair(tiny_pair, tmp_path / "pair")
    check = untouched(base, adapted)
    out = tmp_path / "E"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "cfg").symlink_to(adapted / "config.json")  # anywhere under the folder, not only the result name
    code, text = cli("evaluate", base, "--suite", "demo", "--limit", "2", "-o", out)
    check()
    assert code == 2 and "cfg" in text and "never writes through a link" in text, text
    assert not (out / "base.json").exists()


def test_a_log_hard_linked_to_an_input_is_never_appended_to(tiny_pair, tmp_path, cli, untouched):
    base, adapted = copy_pair(tiny_pair, tmp_path / "pair")
    check = untouched(base, adapted)
    run = tmp_path / "run"
    run.mkdir()
    os.link(base / "config.json", run / "run_log.jsonl")  # a hard link: the same file under two names
    code, text = cli("run", base, adapted, "-o", run, "--suite", "demo", "--limit", "2", "--policies", "balanced",
                     "--no-baselines")  # fmt: skip
    check()
    assert code == 2 and "run_log.jsonl" in text and "hard link" in text, text


@pytest.mark.parametrize("kind", ["link to a binary", "binary file"])
def test_an_undecodable_journal_is_a_clear_error_naming_it(tiny_pair, tmp_path, cli, untouched, kind):
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    check = untouched(*tiny_pair, tmp_path / "blob.bin")
    s3 = tmp_path / "S3"
    s3.mkdir()
    journal = s3 / "partial_scores.jsonl"
    if kind == "binary file":
        journal.write_bytes(binary.read_bytes())
    else:
        journal.symlink_to(binary)
    code, text = cli("analyze", *tiny_pair, "-o", s3)
    check()
    assert code == 2 and "partial_scores.jsonl" in text and "Traceback" not in text, text
    assert binary.read_bytes() == bytes(range(256)) * 4


# -- item 3: plan and its exports replace nothing without --force -------------------------------------------------
def test_plan_does_not_replace_an_existing_file_without_force(scored, tmp_path, cli, note):
    mine, freeze = tmp_path / "mine.yaml", tmp_path / "freeze.yaml"
    mine.write_text("my notes\n")
    code, text = cli("plan", scored, "-o", mine)
    assert code == 2 and "already exists" in text and "--force" in text, text
    assert cli("plan", scored, "-o", tmp_path / "new.yaml", "--export-freeze", mine)[0] == 2
    note("outputs", changed=mine.read_text() != "my notes\n")
    assert mine.read_text() == "my notes\n" and not (tmp_path / "new.yaml").exists()
    code, text = cli("plan", scored, "-o", mine, "--export-freeze", freeze, "--force")
    assert code == 0, text
    assert "layers" in mine.read_text() and freeze.is_file()

"""Issue 12, items 1–3 and 9: inputs are never written, outputs never replaced unasked, one writer per output,
a recoverable --force swap, and links leaving the adapted folder are not copied. All through the real CLI."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest
from conftest import copy_pair, hidden_siblings
from safetensors.torch import load_file

import spear_mm.merging.merge


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "fin.txt"
    path.write_text("Revenue rose 12 percent to 4.2 billion dollars. The central bank held its rate.\n\n" * 20)
    return path


# -- 1. inputs written --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["same", "inside"])
def test_cpt_never_writes_its_base(tiny_pair, corpus, tmp_path, cli, untouched, where):
    base = copy_pair(tiny_pair, tmp_path)[0]  # a copy: on code that writes it, the shared pair stays intact
    check = untouched(base)
    out = base if where == "same" else base / "sub"
    code, text = cli("cpt", base, "--corpus", corpus, "-o", out, "--force", "--max-steps", "1", "--seq-len", "16")
    check()
    assert code == 2, text
    assert "never writes into or over an input" in text and str(base) in text
    assert not (base / "sub").exists()


def test_cpt_refusal_names_the_real_option(tiny_pair, corpus, tmp_path, cli):
    out = tmp_path / "cpt"
    (out / "x").mkdir(parents=True)
    code, text = cli("cpt", tiny_pair[0], "--corpus", corpus, "-o", out, "--max-steps", "1", "--seq-len", "16")
    assert code == 2 and "--force" in text and "--overwrite" not in text, text


@pytest.mark.parametrize("where", ["adapted", "adapted/scores", "base", "parent"])
def test_analyze_never_writes_into_an_input(tiny_pair, tmp_path, cli, untouched, where):
    base, adapted = copy_pair(tiny_pair, tmp_path / "pair")
    check = untouched(base, adapted)
    out = {"adapted": adapted, "adapted/scores": adapted / "scores", "base": base, "parent": base.parent}[where]
    code, text = cli("analyze", base, adapted, "-o", out)
    check()
    assert code == 2 and "never writes into or over an input" in text, text
    assert not (adapted / "scores").exists()


@pytest.mark.parametrize("where", ["same", "inside"])
def test_evaluate_never_writes_into_the_model(tiny_pair, tmp_path, cli, untouched, where):
    model = copy_pair(tiny_pair, tmp_path)[1]
    check = untouched(model)
    out = model if where == "same" else model / "eval"
    code, text = cli("evaluate", model, "--suite", "demo", "--limit", "2", "-o", out)
    check()
    assert code == 2 and "never writes into or over an input" in text, text


def test_an_output_that_links_to_an_input_is_refused(tiny_pair, tmp_path, cli, untouched):
    base, adapted = copy_pair(tiny_pair, tmp_path / "pair")
    check = untouched(base, adapted)
    link = tmp_path / "merged"
    link.symlink_to(adapted, target_is_directory=True)
    code, text = cli("merge", base, adapted, "--t", "0.5", "-o", link, "--force")
    check()
    assert code == 2 and "never writes into or over an input" in text, text


def test_plan_files_never_land_in_a_model_folder(tiny_pair, tmp_path, cli, untouched):
    base, adapted = copy_pair(tiny_pair, tmp_path / "pair")
    scores = tmp_path / "scores"
    assert cli("analyze", base, adapted, "-o", scores)[0] == 0
    check = untouched(base, adapted, scores)
    for args in (["-o", adapted / "plan.yaml"], ["-o", tmp_path / "p.yaml", "--export-mergekit", base / "mk.yaml"],
                 ["-o", scores / "scores.json"]):  # fmt: skip
        code, text = cli("plan", scores, "--base", base, "--adapted", adapted, *args)
        assert code == 2 and "never writes into or over an input" in text, (args, text)
    check()
    (tmp_path / "folder").mkdir()
    code, text = cli("plan", scores, "-o", tmp_path / "folder")
    assert code == 2 and "is a folder" in text, text


# -- 2. outputs replaced unasked; one writer per output -----------------------------------------------------------
def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tiny_pair, tmp_path, cli, untouched):
    base, adapted = tiny_pair
    out = tmp_path / "merged"
    lock = out.parent / f".{out.name}.spear-mm.lock"  # docs/reliability.md: the lock file beside the output
    lock.touch()
    with open(lock) as held:  # another spear-mm process writing `out`
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, text = cli("merge", base, adapted, "--t", "0.5", "-o", out)
    assert code == 2 and "another spear-mm process is writing" in text, text
    assert not out.exists()
    assert cli("merge", base, adapted, "--t", "0.5", "-o", out)[0] == 0  # released: works
    assert hidden_siblings(out) == []


def test_a_folder_created_during_the_merge_is_not_replaced(tiny_pair, tmp_path, cli, monkeypatch, note):
    base, adapted = tiny_pair
    out = tmp_path / "merged"
    finish = spear_mm.merging.merge._finish_folder

    def someone_else_writes(folder, *args):  # the last step before the commit
        finish(folder, *args)
        out.mkdir()
        (out / "their_result.txt").write_text("not yours")

    monkeypatch.setattr(spear_mm.merging.merge, "_finish_folder", someone_else_writes)
    code, text = cli("merge", base, adapted, "--t", "0.5", "-o", out)
    note("outputs", changed=not (out / "their_result.txt").is_file())
    assert code == 2 and "was created or changed by something else" in text, text
    assert (out / "their_result.txt").read_text() == "not yours"
    kept = out.with_name(f"{out.name}.spear-mm-new-{os.getpid()}")
    assert (kept / "model.safetensors").is_file()  # the finished merge is kept aside, not lost


def test_force_replaces_only_what_existed_at_the_start(tiny_pair, tmp_path, cli, monkeypatch, note):
    base, adapted = tiny_pair
    out = tmp_path / "merged"
    assert cli("merge", base, adapted, "--t", "0.5", "-o", out)[0] == 0
    finish = spear_mm.merging.merge._finish_folder

    def swapped_under_us(folder, *args):
        finish(folder, *args)
        os.rename(out, tmp_path / "moved")
        out.mkdir()
        (out / "new.txt").write_text("created by someone else during the merge")

    monkeypatch.setattr(spear_mm.merging.merge, "_finish_folder", swapped_under_us)
    code, text = cli("merge", base, adapted, "--t", "0.25", "-o", out, "--force")
    note("outputs", changed=not (out / "new.txt").is_file())
    assert code == 2 and "was created or changed by something else" in text, text
    assert (out / "new.txt").is_file()


# -- 9. links that leave the adapted folder -----------------------------------------------------------------------
def test_links_leaving_the_adapted_folder_are_not_copied(tiny_pair, tmp_path, cli):
    base, adapted = copy_pair(tiny_pair, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    (adapted / "notes.txt").symlink_to(secret)
    (adapted / "vocab_copy.json").symlink_to(adapted / "tokenizer.json")  # inside the folder: fine
    out = tmp_path / "merged"
    code, text = cli("merge", base, adapted, "--t", "0.5", "-o", out)
    assert code == 0, text
    assert not (out / "notes.txt").exists()
    assert (out / "vocab_copy.json").read_bytes() == (adapted / "tokenizer.json").read_bytes()
    assert not (out / "vocab_copy.json").is_symlink()
    assert "links outside it" in text and "notes.txt" in text
    report = json.loads((out / "merge_report.json").read_text())
    assert any("notes.txt" in n for n in report["notes"])
    assert load_file(out / "model.safetensors")  # a complete model

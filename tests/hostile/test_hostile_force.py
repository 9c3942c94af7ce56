"""Issue 23, items 2–4 and issue 20, item 6: `--force` never deletes an input or the working folder, only
temporaries a run can prove it made are removed, and a folder of another pair or model is refused (or with
--force moved aside whole), never replaced or mixed unasked. All through the real CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import copy_pair
from test_hub import add_to_hub_cache

import spear_mm.io.outputs
from spear_mm.executors import ProcessExecutor

RUN = ["--suite", "demo", "--limit", "2", "--policies", "balanced", "--no-baselines"]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# -- 23.2: --force onto a folder holding or linked from an input, or onto the working folder ----------------------
def test_force_onto_the_store_the_adapted_weights_link_into_is_refused(tiny_pair, tmp_path, cli, untouched):
    base, adapted = copy_pair(tiny_pair, tmp_path / "pair")
    store = tmp_path / "LS" / "store"
    store.mkdir(parents=True)
    (adapted / "model.safetensors").rename(store / "model.safetensors")
    (adapted / "model.safetensors").symlink_to(store / "model.safetensors")
    check = untouched(base, adapted, store)
    code, text = cli("merge", base, adapted, "--t", "0.5", "-o", store, "--force")
    check()
    assert code == 2 and "never writes into or over an input" in text and str(store) in text, text


def test_force_onto_a_hub_cache_blobs_folder_is_refused(tiny_pair, tmp_path, cli, untouched):
    snapshot = add_to_hub_cache(tmp_path / "hub", "org/adapted", tiny_pair[1], "c" * 40)
    blobs = snapshot.parents[1] / "blobs"
    check = untouched(blobs)
    code, text = cli("merge", tiny_pair[0], snapshot, "--t", "0.5", "-o", blobs, "--force")
    check()
    assert code == 2 and "never writes into or over an input" in text, text


@pytest.mark.parametrize("out", ["", ".", ".."])
def test_force_onto_the_working_folder_or_a_parent_is_refused(tiny_pair, tmp_path, cli, untouched, monkeypatch, out):
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    (work / "mine.txt").write_text("my work")
    check = untouched(tmp_path / "work", kind="unrelated")
    monkeypatch.chdir(work)
    code, text = cli("merge", *tiny_pair, "--t", "0.5", "-o", out, "--force")
    check()
    assert code == 2 and "current folder" in text, text


# -- 23.3: delete only what the run can prove it made ------------------------------------------------------------
def test_cpt_leaves_a_work_folder_it_did_not_make(tiny_pair, tmp_path, cli, untouched):
    corpus = tmp_path / "fin.txt"
    corpus.write_text("Revenue rose 12 percent to 4.2 billion dollars. The central bank held its rate.\n\n" * 20)
    work = tmp_path / "CW.work"
    work.mkdir()
    (work / "notes.txt").write_text("someone else's")
    check = untouched(work, kind="unrelated")
    code, text = cli("cpt", tiny_pair[0], "--corpus", corpus, "-o", tmp_path / "CW", "--max-steps", "1",
                     "--seq-len", "16")  # fmt: skip
    check()
    assert code == 2 and "CW.work" in text and "not made by spear-mm" in text, text


def test_only_temporaries_of_this_folders_runs_are_removed(tiny_pair, tmp_path, cli, untouched):
    out = tmp_path / "eval"
    assert cli("evaluate", tiny_pair[0], "--suite", "demo", "--limit", "2", "-o", out)[0] == 0
    token = json.loads((out / ".spear-mm-folder").read_text())["tokens"][0]
    pid = dead_pid()
    # not spear-mm's: any name without a token this folder recorded (the last has a token, but not a recorded one)
    theirs = [
        out / "sub" / f".notes.{pid}.tmp",
        out / f".base.json.{pid}.x.tmp",
        out / f".a.spear-mm-{pid}-0123abcd.x.tmp",
    ]
    for p in theirs:
        p.parent.mkdir(exist_ok=True)
        p.write_text("not spear-mm's")
    ours = out / f".base.json.spear-mm-{pid}-{token}.abc.tmp"  # a killed run of this folder left it
    ours.write_text("half")
    check = untouched(out / "sub", kind="unrelated")
    assert cli("evaluate", tiny_pair[0], "--suite", "demo", "--limit", "2", "-o", out)[0] == 0
    check()
    assert all(p.read_text() == "not spear-mm's" for p in theirs) and not ours.exists()


def test_demo_cache_inside_the_base_is_refused(tiny_pair, tmp_path, cli, untouched):
    base = copy_pair(tiny_pair, tmp_path / "pair")[0]
    check = untouched(base)
    code, text = cli("demo", "-o", tmp_path / "run", "--base", base, "--cache-dir", base / "cache", "--quick")
    check()
    assert code == 2 and "--cache-dir" in text and "never writes into or over an input" in text, text
    assert not (base / "cache").exists()


# -- 23.4 / 20.6: another model or pair into an existing folder ---------------------------------------------------
def test_evaluate_of_another_model_with_the_same_name(tiny_pair, tmp_path, cli, note):
    other = tmp_path / "other" / "base"
    shutil.copytree(tiny_pair[1], other)  # the adapted weights in a folder also named `base`
    out = tmp_path / "eval"
    assert cli("evaluate", tiny_pair[0], "--suite", "demo", "--limit", "2", "-o", out)[0] == 0
    before = (out / "base.json").read_bytes()
    code, text = cli("evaluate", other, "--suite", "demo", "--limit", "2", "-o", out)
    note("outputs", changed=(out / "base.json").read_bytes() != before)
    assert code == 2 and "another model" in text and "--force" in text, text
    assert cli("evaluate", other, "--suite", "demo", "--limit", "2", "-o", out, "--force")[0] == 0
    moved = list((out / "replaced").glob("base-*.json"))
    assert len(moved) == 1 and moved[0].read_bytes() == before
    assert json.loads((out / "base.json").read_text())["model_path"] == str(other.resolve())


def test_analyze_of_another_pair_into_existing_scores(tiny_pair, tmp_path, cli, note):
    out = tmp_path / "S"
    assert cli("analyze", *tiny_pair, "-o", out)[0] == 0
    before = (out / "scores.json").read_bytes()
    code, text = cli("analyze", tiny_pair[1], tiny_pair[0], "-o", out)  # the pair the other way round
    note("outputs", changed=(out / "scores.json").read_bytes() != before)
    assert code == 2 and "belongs to another" in text and "--force" in text, text
    (out / ".spear-mm-folder").unlink()  # a folder from before the record: scores.json names its pair
    assert cli("analyze", tiny_pair[1], tiny_pair[0], "-o", out)[0] == 2
    assert cli("analyze", tiny_pair[1], tiny_pair[0], "-o", out, "--force")[0] == 0
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("S.replaced-")]
    assert len(aside) == 1 and (aside[0] / "scores.json").read_bytes() == before
    assert (out / "scores.json").read_bytes() != before


def test_run_of_another_pair_into_an_existing_run(tiny_pair, tmp_path, cli, note):
    out = tmp_path / "RUN"
    code, text = cli("run", *tiny_pair, "-o", out, *RUN)
    assert code == 0, text
    code, text = cli("run", "--config", out / "run.yaml")  # the run's own record repeats it (not an input clash)
    assert code == 0, text
    chosen = sorted(p.name for p in (out / "models").iterdir()) if (out / "models").is_dir() else []
    before = {p.name: p.read_bytes() for p in (out / "eval").glob("*.json")}
    code, text = cli("run", tiny_pair[1], tiny_pair[0], "-o", out, *RUN)
    after = {p.name: p.read_bytes() for p in (out / "eval").glob("*.json")}
    note("outputs", changed=after != before or chosen != (sorted(p.name for p in (out / "models").iterdir())
                                                          if (out / "models").is_dir() else []))  # fmt: skip
    assert code == 2 and "belongs to another" in text, text
    assert cli("run", tiny_pair[1], tiny_pair[0], "-o", out, *RUN, "--force")[0] == 0
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("RUN.replaced-")]
    assert len(aside) == 1 and {p.name: p.read_bytes() for p in (aside[0] / "eval").glob("*.json")} == before
    summary = json.loads((out / "summary.json").read_text())
    assert summary["base_path"] == str(tiny_pair[1].resolve())  # the new pair's, not mixed with the old


# -- 20 smaller: the free-space estimate of run ------------------------------------------------------------------
def test_run_free_space_counts_evaluations_and_the_report(tiny_pair, tmp_path, cli, monkeypatch):
    weights = sum(p.stat().st_size for p in tiny_pair[1].glob("*.safetensors"))
    real = shutil.disk_usage

    def nearly_full(path):  # room for the chosen model, not for the evaluations and the report
        return real(path)._replace(free=int(weights * 1.05))

    monkeypatch.setattr(spear_mm.io.outputs.shutil, "disk_usage", nearly_full)
    code, text = cli("run", *tiny_pair, "-o", tmp_path / "RUN", *RUN)
    assert code == 2 and "not enough disk space" in text, text
    assert not any((tmp_path / "RUN").glob("eval/*.json"))


# -- 20 smaller: a killed process pool leaves no defunct child ---------------------------------------------------
def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("\n")[2].split()[1]  # R, S, Z (defunct), ...
    except FileNotFoundError:
        return "gone"


@pytest.mark.slow  # kills a process pool's workers
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_an_interrupted_process_pool_reaps_its_workers_at_once():
    ex = ProcessExecutor(2)
    ex.map(time.sleep, [0.01, 0.01])
    workers = list(ex._pool._processes)
    with pytest.raises(KeyboardInterrupt), ex:  # Ctrl-C / SIGTERM unwinding through the pool
        raise KeyboardInterrupt
    assert {pid: _state(pid) for pid in workers} == {pid: "gone" for pid in workers}  # killed and reaped, none Z

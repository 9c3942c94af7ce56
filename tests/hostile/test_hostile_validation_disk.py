"""Issue 20 item 4 (cpt's final save: free space, ENOSPC, EFBIG in one paragraph, as merge) and issue 23 item 7
(a kill -9 during an lm-eval evaluation leaves a scratch folder in $TMPDIR that the next run proves stale and
removes; folders it cannot prove stale stay). Real CLI runs; real processes where a kill or a limit is needed."""

from __future__ import annotations

import importlib.util
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import hidden_siblings, spear_subprocess


def _start_ticks(pid: int) -> str:
    """A process's start time (field 22 of /proc/PID/stat): with the pid, it names one process for good."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


CPT = ["--max-steps", "1", "--seq-len", "16", "--batch-size", "1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "fin.txt"
    path.write_text("Revenue rose 12 percent to 4.2 billion dollars. The central bank held its rate.\n\n" * 20)
    return path


def test_cpt_checks_free_space_before_training(tiny_pair, corpus, tmp_path, cli, untouched, monkeypatch):
    check = untouched(tiny_pair[0], corpus.parent)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(10**9, 10**9 - 3000, 3000))
    out = tmp_path / "cpt"
    code, text = cli("cpt", tiny_pair[0], "--corpus", corpus, "-o", out, *CPT)
    monkeypatch.undo()
    check()
    assert code == 2 and "not enough disk space" in text and "3.00 kB free" in text, text
    assert not out.exists() and not (tmp_path / "cpt.work").exists()
    assert not [n for n in hidden_siblings(out) if "tmp" in n]


@pytest.mark.slow  # trains a CPT step
def test_cpt_disk_full_while_saving_is_one_paragraph(tiny_pair, corpus, tmp_path, cli, untouched, monkeypatch):
    """safetensors reports a full disk as `SafetensorError: … (os error 28)`: it is a disk error like any other."""
    import transformers.modeling_utils as mu
    from safetensors import SafetensorError

    def full(*_a, **_k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(mu, "safe_save_file", full)
    check = untouched(tiny_pair[0], corpus.parent)
    out = tmp_path / "cpt"
    code, text = cli("cpt", tiny_pair[0], "--corpus", corpus, "-o", out, *CPT)
    check()
    assert code == 2 and "ENOSPC" in text and "the disk is full" in text and "model.safetensors" in text, text
    assert "Traceback" not in text and "SafetensorError" not in text
    assert not out.exists() and not [n for n in hidden_siblings(out) if "tmp" in n]


@pytest.mark.slow  # a CPT in a fresh Python process under a file size limit
def test_cpt_file_size_limit_is_a_clear_error(tiny_pair, corpus, tmp_path):
    out = tmp_path / "cpt"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))  # the model is ~1.1 MB in float32

    proc = spear_subprocess(["cpt", str(tiny_pair[0]), "--corpus", str(corpus), "-o", str(out), *CPT],
                            preexec_fn=limit, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    text = " ".join(proc.communicate(timeout=300)[0].split())
    assert proc.returncode == 2 and "EFBIG" in text and "ulimit -f" in text and "Traceback" not in text, text
    assert not out.exists() and not [n for n in hidden_siblings(out) if "tmp" in n]


@pytest.mark.slow  # kills an lm-eval run in a fresh process
@pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="lm_eval not installed")
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_a_killed_lm_eval_scratch_folder_is_removed_by_the_next_run(tiny_pair, tmp_path, cli, monkeypatch, note):
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    # folders the next run cannot prove stale: a live process's (this one), and names of another form
    live = scratch / f"spear-lm-eval-{os.getpid()}-{_start_ticks(os.getpid())}-0123abcd"
    others = [live, scratch / "spear-lm-eval-mine", scratch / "spear-lm-eval-1-2-xyz"]
    for folder in others:
        folder.mkdir()
        (folder / "keep.txt").write_text("not spear-mm's to delete\n")
    args = ["evaluate", str(tiny_pair[1]), "--suite", "demo", "--limit", "2", "--backend", "lm-eval"]
    hold = ("import time, spear_mm.evaluation.lm_eval_backend as b\nw = b.write_items\n"
            "b.write_items = lambda *a, **k: (w(*a, **k), print('WRITTEN', flush=True), time.sleep(300))[0]")  # fmt: skip
    monkeypatch.setenv("TMPDIR", str(scratch))  # the child's $TMPDIR (this process's tempdir is set below)
    proc = spear_subprocess([*args, "-o", str(tmp_path / "e1")], pre=hold, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 240
    for line in proc.stdout:
        if "WRITTEN" in line or time.monotonic() > deadline:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = [p for p in scratch.iterdir() if p not in others]
    assert len(left) == 1 and left[0].name.startswith(f"spear-lm-eval-{proc.pid}-"), left  # the killed run's
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    code, text = cli(*args, "-o", tmp_path / "e2")
    assert code == 0, text
    assert not left[0].exists(), "the killed run's scratch folder is still there"
    kept = all((f / "keep.txt").is_file() for f in others)
    note("inputs", changed=not kept)  # unrelated files beside it
    assert kept and sorted(scratch.iterdir()) == sorted(others)

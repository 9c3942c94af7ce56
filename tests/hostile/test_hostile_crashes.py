"""Issue 12, items 3 and 4: kills at the crash points of a --force swap and while writing, and SIGTERM on a run
with a process pool. Real processes, real signals (a hook in the child kills it at the exact point)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import hidden_siblings, spear_subprocess
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # real processes killed at crash points: seconds each (`make test` runs them)

# Python run in the child before the CLI: SIGKILL itself at one point of the commit (by path, so the same hook
# fits any implementation of the swap).
_RENAME_HOOK = """
import os, pathlib, signal
FINAL, MODE = pathlib.Path(os.environ["HOOK_FINAL"]).resolve(), os.environ["HOOK_MODE"]
_rename = pathlib.Path.rename
def rename(self, target):
    if MODE == "before_moving_old" and pathlib.Path(self) == FINAL:
        os.kill(os.getpid(), signal.SIGKILL)
    result = _rename(self, target)
    if (MODE == "after_moving_old" and pathlib.Path(self) == FINAL) or (
        MODE == "after_new_in_place" and pathlib.Path(target) == FINAL
    ):
        os.kill(os.getpid(), signal.SIGKILL)
    return result
pathlib.Path.rename = rename
"""
_WRITE_HOOK = """
import os, signal
import spear_mm.io.writer
def close(self):
    os.kill(os.getpid(), signal.SIGKILL)
spear_mm.io.writer.ShardedWriter.close = close
"""


def _killed(args: list[str], pre: str, **env) -> int:
    os.environ.update(env)
    try:
        proc = spear_subprocess(args, pre=pre, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        proc.communicate(timeout=120)
    finally:
        for key in env:
            os.environ.pop(key, None)
    return proc.returncode


@pytest.mark.parametrize("point", ["before_moving_old", "after_moving_old", "after_new_in_place"])
def test_a_kill_inside_the_force_swap_is_finished_by_the_next_run(tiny_pair, tmp_path, cli, point, note):
    base, adapted = tiny_pair
    out, expected = tmp_path / "merged", tmp_path / "expected"
    assert cli("merge", base, adapted, "--t", "0.5", "-o", out)[0] == 0
    assert cli("merge", base, adapted, "--t", "0.25", "-o", expected)[0] == 0
    rc = _killed(["merge", str(base), str(adapted), "--t", "0.25", "-o", str(out), "--force"], _RENAME_HOOK,
                 HOOK_FINAL=str(out), HOOK_MODE=point)  # fmt: skip
    assert rc == -signal.SIGKILL
    # the next run on that output (without --force) first finishes the swap, then refuses to replace it
    code, text = cli("merge", base, adapted, "--t", "0.5", "-o", out)
    note("outputs", changed=False)
    assert code == 2 and "exists and is not empty" in text, text
    assert _same_model(out, expected)  # the killed run's complete t = 0.25 output, not the old t = 0.5 one
    assert hidden_siblings(out) == []


def _same_model(a: Path, b: Path) -> bool:
    ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return ta.keys() == tb.keys() and all(torch.allclose(ta[k], tb[k], rtol=0, atol=1e-4) for k in ta)


def test_a_kill_while_writing_leaves_a_temp_that_the_next_run_removes(tiny_pair, tmp_path, cli):
    base, adapted = tiny_pair
    out = tmp_path / "merged"
    rc = _killed(["merge", str(base), str(adapted), "--t", "0.5", "-o", str(out)], _WRITE_HOOK)
    assert rc == -signal.SIGKILL
    assert not out.exists()
    left = [n for n in hidden_siblings(out) if "tmp" in n]
    assert left, "the kill should have left the half-written temporary folder"
    code, text = cli("merge", base, adapted, "--t", "0.5", "-o", out)
    assert code == 0, text
    assert hidden_siblings(out) == []


def _children(pid: int) -> set[int]:
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.add(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux) to find the workers")
def test_sigterm_on_run_takes_its_pool_workers_down(tiny_pair, tmp_path):
    base, adapted = tiny_pair
    run_dir = tmp_path / "run"
    args = ["run", str(base), str(adapted), "-o", str(run_dir), "--suite", "demo", "--executor", "process",
            "--workers", "2", "--no-baselines", "--policies", "balanced", "--sweep", "default"]  # fmt: skip
    proc = spear_subprocess(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, workers = time.time() + 120, set()
        while time.time() < deadline and proc.poll() is None:
            workers = {k for k in _children(proc.pid) if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()}
            if len(workers) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None and len(workers) >= 2, "the run should be busy in its process pool"
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        deadline = time.time() + 20
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers), "pool workers outlived the terminated run"
        assert proc.returncode in (143, -signal.SIGTERM)
        assert not [n for n in hidden_siblings(run_dir) if "tmp" in n]
    finally:
        if proc.poll() is None:
            proc.kill()


_SLOW_HOOK = """
import time
import spear_mm.merging.merge
_finish = spear_mm.merging.merge._finish_folder
def slow(*args):
    _finish(*args)
    time.sleep(6)
spear_mm.merging.merge._finish_folder = slow
"""


def test_two_merges_to_one_output_at_once_the_second_is_refused(tiny_pair, tmp_path, cli, note):
    base, adapted = tiny_pair
    out = tmp_path / "merged"
    first = spear_subprocess(["merge", str(base), str(adapted), "--t", "0.25", "-o", str(out)], pre=_SLOW_HOOK,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not any("tmp" in n for n in hidden_siblings(out)):
            time.sleep(0.1)
        assert first.poll() is None, "the first merge should still be writing"
        code, text = cli("merge", base, adapted, "--t", "0.75", "-o", out)
        assert code == 2 and "another spear-mm process is writing" in text, text
        assert first.wait(timeout=120) == 0
    finally:
        if first.poll() is None:
            first.kill()
    report = json.loads((out / "merge_report.json").read_text())
    note("outputs", changed="t=0.25" not in report["plan_summary"])
    assert "t=0.25" in report["plan_summary"]  # the first result is the one that stays
    assert hidden_siblings(out) == []


def test_recovery_never_replaces_an_output_changed_after_the_kill(tiny_pair, tmp_path, cli, note):
    base, adapted = tiny_pair
    out = tmp_path / "merged"
    assert cli("merge", base, adapted, "--t", "0.5", "-o", out)[0] == 0
    rc = _killed(["merge", str(base), str(adapted), "--t", "0.25", "-o", str(out), "--force"], _RENAME_HOOK,
                 HOOK_FINAL=str(out), HOOK_MODE="before_moving_old")  # fmt: skip
    assert rc == -signal.SIGKILL
    os.rename(out, tmp_path / "elsewhere")  # the user moves the old model away and puts their own folder there
    out.mkdir()
    (out / "mine.txt").write_text("the user's")
    code, text = cli("merge", base, adapted, "--t", "0.5", "-o", out)
    note("outputs", changed=not (out / "mine.txt").is_file())
    assert code == 2 and "exists and is not empty" in text, text
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("merged.spear-mm-new-")]
    assert len(kept) == 1 and (kept[0] / "model.safetensors").is_file()  # the killed run's output, kept aside

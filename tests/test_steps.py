"""`Steps.cached`: one resumable step computes once, a re-run loads, a changed key recomputes, a crash records nothing."""

from __future__ import annotations

import json

import pytest

from spear_mm.io.files import atomic_write_text
from spear_mm.pipeline.steps import Steps, sidecar


def _step(steps: Steps, out, key: str, calls: list[str], text: str = "scores", crash: bool = False):
    def compute() -> str:
        calls.append("compute")
        if crash:
            out.write_text(text[:3])  # half an output, then the crash
            raise RuntimeError("killed mid-step")
        atomic_write_text(out, text)
        return text

    def load(record) -> str:
        calls.append("load")
        assert record.extra == {"chars": len(text)}
        return out.read_text()

    return steps.cached("analyze", out, key, compute, load, extra=lambda value: {"chars": len(value)})


def _log(run) -> list[tuple[str, str]]:
    return [(e["step"], e["status"]) for e in map(json.loads, (run / "run_log.jsonl").read_text().splitlines())]


def test_cached_computes_once_then_loads(tmp_path):
    out, calls = tmp_path / "scores.txt", []
    first = _step(Steps(tmp_path), out, "k1", calls)
    assert (first.value, first.skipped, calls) == ("scores", False, ["compute"])
    assert json.loads(sidecar(out).read_text())["key"] == "k1"
    again = _step(Steps(tmp_path), out, "k1", calls)  # a new run over the same folder
    assert (again.value, again.skipped, calls[-1]) == ("scores", True, "load")
    assert again.seconds == first.seconds == first.record.seconds  # the cost as recorded when it ran
    assert _log(tmp_path) == [("analyze", "ran"), ("analyze", "skipped")]


def test_cached_recomputes_on_a_changed_key_or_a_missing_output(tmp_path):
    out, calls = tmp_path / "scores.txt", []
    _step(Steps(tmp_path), out, "k1", calls)
    changed = _step(Steps(tmp_path), out, "k2", calls, text="other scores")
    assert (changed.value, changed.skipped, calls) == ("other scores", False, ["compute", "compute"])
    out.unlink()  # the sidecar alone does not make a finished step
    assert not _step(Steps(tmp_path), out, "k2", calls, text="other scores").skipped
    assert calls == ["compute"] * 3


def test_a_crash_mid_compute_leaves_no_record(tmp_path):
    out, calls = tmp_path / "scores.txt", []
    with pytest.raises(RuntimeError, match="killed"):
        _step(Steps(tmp_path), out, "k1", calls, crash=True)
    assert out.exists() and not sidecar(out).exists()  # a partial output, but nothing says it is finished
    assert not (tmp_path / "run_log.jsonl").exists()
    resumed = _step(Steps(tmp_path), out, "k1", calls)
    assert (resumed.value, resumed.skipped, calls) == ("scores", False, ["compute", "compute"])

"""Hostile cases (issue 12): every run goes through the real CLI; each case records what happened, so
`bench/hostile_counts.py` can print the closing counts (cases, clear errors, tracebacks, inputs modified,
outputs replaced unasked) from the checks the tests really made."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from common import digest, fold

import spear_mm.cli
from spear_mm.cli import main

ROOT = Path(spear_mm.cli.__file__).resolve().parents[2]  # the spear_mm under test (children import the same)
RECORD: list[dict] = []  # one entry per CLI run / check, written at the end when SPEAR_HOSTILE_REPORT is set


def _record(request, kind: str, **data) -> None:
    RECORD.append({"case": request.node.nodeid.split("::", 1)[-1], "kind": kind, **data})


@pytest.fixture()
def cli(monkeypatch, capsys, request) -> Callable[..., tuple[int, str]]:
    """Run `spear-mm ARGS` in process through `main()`; returns (exit code, stdout+stderr folded)."""
    monkeypatch.setattr(spear_mm.cli.console, "width", 4000)
    for mod in ("merge", "analyze", "evaluate", "run", "train"):  # `spear-mm CMD` imports CMD's module only
        monkeypatch.setattr(importlib.import_module(f"spear_mm.cli.{mod}").out_console, "width", 4000)

    def run(*args) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["spear-mm", *map(str, args)])
        traceback = False
        try:
            with pytest.raises(SystemExit) as exc:
                main()
            code = exc.value.code or 0
        except BaseException:
            traceback, code = True, 1
            _record(request, "run", args=[str(a) for a in args], rc=code, traceback=True)
            raise
        out = capsys.readouterr()
        text = fold(out.out + out.err)
        _record(request, "run", args=[str(a) for a in args], rc=code, traceback=traceback or "Traceback" in text)
        return code, text

    return run


@pytest.fixture()
def untouched(request) -> Callable[..., Callable[[], None]]:
    """`check = untouched(folder, ...)` snapshots the inputs; `check()` asserts (and records) they are unchanged."""

    def snap(*folders: Path, kind: str = "inputs") -> Callable[[], None]:
        before = digest(*folders)

        def check() -> None:
            changed = before != digest(*folders)
            _record(request, kind, changed=changed)
            assert not changed, f"{kind} changed: {folders}"

        return check

    return snap


@pytest.fixture()
def note(request) -> Callable[..., None]:
    """`note("outputs", changed=...)`: record a check made by hand (for the closing counts)."""
    return lambda kind, **data: _record(request, kind, **data)


def spear_subprocess(args: list[str], *, pre: str = "", **kw) -> subprocess.Popen:
    """`spear-mm ARGS` in a fresh Python process (for kills and signals); `pre` is Python run first (a crash hook)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    code = f"import sys\n{pre}\nfrom spear_mm.cli import main\nsys.argv = ['spear-mm', *sys.argv[1:]]\nmain()\n"
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, text=True, **kw)


def copy_pair(pair: tuple[Path, Path], dest: Path) -> tuple[Path, Path]:
    base, adapted = dest / "base", dest / "adapted"
    shutil.copytree(pair[0], base)
    shutil.copytree(pair[1], adapted)
    return base, adapted


def hidden_siblings(path: Path) -> list[str]:
    """What spear-mm left beside an output: temporary, new, old folders (the lock file is gone after a run)."""
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def pytest_sessionfinish(session, exitstatus) -> None:
    target = os.environ.get("SPEAR_HOSTILE_REPORT")
    if target and RECORD:
        Path(target).write_text(json.dumps(RECORD, indent=1))

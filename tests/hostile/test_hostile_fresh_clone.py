"""Issue 12, item 10: on a fresh clone `make test` (and `make demo`) install first, as the README says; a stamp
file keeps the second run from installing again; CI runs the README's commands as written, `make test` first.
`make -n` prints what make would run without running it (no install happens in this test)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


@pytest.fixture()
def clone(tmp_path) -> Path:
    """The project's own files (as a clone has them), without .venv."""
    for name in ("Makefile", "pyproject.toml", "constraints.txt", "README.md"):
        shutil.copy2(ROOT / name, tmp_path / name)
    return tmp_path


def _plan(folder: Path, target: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    return subprocess.run(
        ["make", "-n", target], cwd=folder, env=env, capture_output=True, text=True, check=True
    ).stdout


@pytest.mark.parametrize("target", ["test", "demo", "test-fast", "lint"])
def test_a_fresh_clone_installs_before_running(clone, target):
    steps = _plan(clone, target)
    assert "-m venv .venv" in steps and "pip install -q torch==2.13.0" in steps and '-e ".[' in steps, steps
    assert steps.index("pip install") < steps.rindex(".venv/bin/"), steps


def test_the_second_run_does_not_install_again(clone):
    (clone / ".venv" / "bin").mkdir(parents=True)
    (clone / ".venv" / "bin" / "python").touch()
    (clone / ".venv" / ".spear-mm-installed").touch()
    steps = _plan(clone, "test")
    assert "pip install" not in steps and "-m pytest" in steps, steps
    os.utime(clone / "pyproject.toml")  # a changed dependency list installs again
    os.utime(clone / ".venv" / ".spear-mm-installed", (1, 1))
    assert "pip install" in _plan(clone, "test")


def test_ci_runs_the_readme_commands_make_test_first():
    readme = (ROOT / "README.md").read_text()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in ci if line.startswith("make ")]
    assert commands[0] == "make test" and "make test" in readme
    assert "make install" not in ci  # nothing installs before the README's first command
    assert {"make lint", "make demo-quick"} <= set(commands) and any("mergekit-venv" in line for line in ci)

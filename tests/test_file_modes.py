"""Written files follow the umask (0644 / 0755 under 022), as a teammate, a worker running as another user or a
model server needs: scores, plans (also the copy inside a merged model), the mergekit and freeze exports,
evaluation results, probe statistics, run files and temporary folders renamed into place (the demo's cached base model)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from common import run_cli

from spear_mm.io.files import atomic_write_text, temp_dir


@pytest.fixture()
def umask() -> Iterator[callable]:
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775)])
def test_the_atomic_write_and_temporary_folders_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    path = atomic_write_text(tmp_path / "a" / "summary.json", "{}")
    atomic_write_text(path, '{"again": 1}')  # a rewrite too
    assert stat.S_IMODE(path.stat().st_mode) == file_mode
    folder = temp_dir(tmp_path, ".cache-")
    assert folder.name.startswith(".cache-") and stat.S_IMODE(folder.stat().st_mode) == dir_mode
    assert temp_dir(tmp_path, ".cache-") != folder
    assert sorted(p.name for p in path.parent.iterdir()) == ["summary.json"]  # no temporary left


def test_every_file_a_command_writes_is_0644_under_umask_022(tiny_pair, tmp_path, monkeypatch, capsys, umask):
    base, adapted = tiny_pair
    out = tmp_path / "out"

    def cli(*args):
        code, text = run_cli(monkeypatch, capsys, *args)
        assert code == 0, text

    cli("analyze", base, adapted, "-o", out / "scores")
    cli("plan", out / "scores", "--policy", "balanced", "-o", out / "plan.yaml",
        "--export-mergekit", out / "mergekit.yaml", "--export-freeze", out / "freeze.yaml")  # fmt: skip
    cli("merge", base, adapted, "--plan", out / "plan.yaml", "-o", out / "merged")
    cli("evaluate", adapted, "--suite", "demo", "--limit", "2", "-o", out / "eval")
    probe = tmp_path / "probe.txt"
    probe.write_text("The quarterly report shows revenue growth in every segment of the bank. " * 8)
    cli("stats", base, adapted, "--domain", probe, "--general", probe, "--tokens", "64", "-o", out / "stats")
    modes = _modes(out)
    for name in ("scores/scores.json", "plan.yaml", "mergekit.yaml", "freeze.yaml", "merged/plan.yaml",
                 "merged/model.safetensors", "eval/adapted.json", "stats/stats.json", "stats/grams.general.0.safetensors"):  # fmt: skip
        assert name in modes, name
    wrong = {name: oct(mode) for name, mode in modes.items() if mode != (0o755 if (out / name).is_dir() else 0o644)}
    assert not wrong


def test_a_cpt_model_is_readable_like_every_output(cpt_pair):
    """save_pretrained (safetensors ≥ 0.8) writes model.safetensors 0600; cpt's published folder follows the umask."""
    from spear_mm.io.files import umask

    _, adapted = cpt_pair
    want = 0o666 & ~umask()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in adapted.iterdir() if p.is_file()}
    assert "model.safetensors" in modes and {n: oct(m) for n, m in modes.items() if m != want} == {}

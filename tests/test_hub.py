"""Hub ids `org/name[@revision]` for every command that takes a model, resolved offline from a hub-cache layout
built here (models--org--name/{blobs,snapshots/<commit>,refs/main}), never from the network."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from common import run_cli

from spear_mm.io.hub import ALLOW_PATTERNS, hub_ref, parse_hub_id, resolve_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OLD = "fedcba9876543210fedcba9876543210fedcba98"


def add_to_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str, ref: str | None = "main") -> Path:
    """Lay `folder` out the way huggingface_hub caches a snapshot: content-addressed blobs, a snapshot of
    relative symlinks, and refs/<ref> holding the commit. Returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True)
    for src in sorted(folder.iterdir()):
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / src.name).symlink_to(Path("../..") / "blobs" / blob.name)
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture()
def hub(tiny_pair, tmp_path, monkeypatch) -> Path:
    """org/base and org/adapted (main = COMMIT; org/adapted also has an older commit OLD) in a private cache."""
    cache = tmp_path / "hub-cache"
    base, adapted = tiny_pair
    add_to_hub_cache(cache, "org/base", base, COMMIT)
    add_to_hub_cache(cache, "org/adapted", adapted, COMMIT)
    add_to_hub_cache(cache, "org/adapted", base, OLD, ref=None)  # reachable by its commit only
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # `org/base` is not a local folder here
    return cache


@pytest.fixture()
def cli(monkeypatch, capsys) -> Callable[..., tuple[int, str]]:
    return lambda *args: run_cli(monkeypatch, capsys, *args)


def test_parse_hub_id():
    assert parse_hub_id("org/name") == ("org/name", None)
    assert parse_hub_id("HuggingFaceTB/SmolLM2-135M@v1.0") == ("HuggingFaceTB/SmolLM2-135M", "v1.0")
    assert parse_hub_id("org/name@" + COMMIT) == ("org/name", COMMIT)
    for not_an_id in ("name", "/abs/path", "a/b/c", "../x", "./x", "org/../x"):
        assert parse_hub_id(not_an_id) is None, not_an_id
    assert "*.safetensors" in ALLOW_PATTERNS and "*.bin" not in ALLOW_PATTERNS


def test_offline_resolution_from_the_cache(hub, tiny_pair):
    snap = resolve_model("org/adapted")
    assert snap == hub / "models--org--adapted" / "snapshots" / COMMIT
    assert (snap / "model.safetensors").read_bytes() == (tiny_pair[1] / "model.safetensors").read_bytes()
    assert resolve_model("org/adapted@" + OLD).name == OLD
    assert str(hub_ref(snap)) == f"org/adapted@{COMMIT}"
    assert hub_ref(tiny_pair[0]) is None


def test_a_local_folder_wins_over_the_hub(hub, tiny_pair, tmp_path):
    local = tmp_path / "org" / "base"
    shutil.copytree(tiny_pair[1], local)  # a local folder spelt like the id: the folder is used
    assert resolve_model("org/base") == Path("org/base")


def test_offline_miss_names_the_id_and_the_cache_folder(hub, cli):
    code, text = cli("inspect", "org/missing")
    assert code == 2
    assert "org/missing" in text and "HF_HUB_OFFLINE=1" in text and str(hub / "models--org--missing") in text
    code, text = cli("inspect", "org/base@v9")  # a revision the cache does not hold
    assert code == 2 and "revision v9" in text and str(hub / "models--org--base") in text


def test_every_command_takes_hub_ids_and_records_the_revision(hub, cli, tmp_path):
    code, text = cli("inspect", "org/adapted")
    assert code == 0 and f"models--org--adapted/snapshots/{COMMIT}" in text and "layers=6" in text
    code, text = cli("analyze", "org/base", "org/adapted@main", "-o", tmp_path / "scores", "-j", "1")
    assert code == 0, text
    code, text = cli("plan", tmp_path / "scores", "--policy", "balanced", "-o", tmp_path / "plan.yaml")
    assert code == 0, text
    prov = yaml.safe_load((tmp_path / "plan.yaml").read_text())["provenance"]
    assert prov["base_hub"] == f"org/base@{COMMIT}" and prov["adapted_hub"] == f"org/adapted@{COMMIT}"
    code, text = cli("plan", "validate", tmp_path / "plan.yaml", "org/adapted")
    assert code == 0 and "plan OK" in text, text
    code, text = cli("merge", "org/base", "org/adapted", "--plan", tmp_path / "plan.yaml", "-o", tmp_path / "m")
    assert code == 0, text
    report = json.loads((tmp_path / "m" / "merge_report.json").read_text())
    assert report["adapted_hub"] == f"org/adapted@{COMMIT}" and report["base_hub"] == f"org/base@{COMMIT}"
    card = (tmp_path / "m" / "README.md").read_text()
    assert f"hub `org/adapted@{COMMIT}`" in card and "base_model:\n- org/base\n- org/adapted\n" in card
    assert not (tmp_path / "m" / "model.safetensors").is_symlink()  # the output holds data, not cache links
    code, text = cli("evaluate", "org/adapted", "--suite", "demo", "--limit", "2", "-o", tmp_path / "eval")
    assert code == 0, text
    assert json.loads((tmp_path / "eval" / "adapted.json").read_text())["model_path"].endswith(COMMIT)


@pytest.mark.slow
def test_run_records_the_resolved_revisions_in_the_summary(hub, cli, tmp_path):
    args = ["--suite", "demo", "--limit", "4", "--policies", "balanced", "--no-baselines", "-o", tmp_path / "run"]
    code, text = cli("run", "org/base", "org/adapted", *args)
    assert code == 0, text
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["base_hub"] == f"org/base@{COMMIT}" and summary["adapted_hub"] == f"org/adapted@{COMMIT}"


@pytest.mark.slow  # trains a CPT step
def test_cpt_takes_a_hub_id_and_records_it(hub, cli, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Revenue rose 12 percent to 4.2 billion dollars.\n\nThe central bank held its rate.\n" * 20)
    args = ["--corpus", corpus, "-o", tmp_path / "cpt", "--max-steps", "1", "--seq-len", "16", "--device", "cpu"]
    code, text = cli("cpt", "org/base", *args)
    assert code == 0, text
    cost = json.loads((tmp_path / "cpt" / "cost.json").read_text())
    assert cost["base_hub"] == f"org/base@{COMMIT}"


def test_a_snapshot_without_safetensors_says_so(hub, cli, tiny_pair, tmp_path):
    only_config = tmp_path / "only-config"
    only_config.mkdir()
    shutil.copy(tiny_pair[0] / "config.json", only_config / "config.json")
    add_to_hub_cache(hub, "org/binonly", only_config, COMMIT)
    code, text = cli("inspect", "org/binonly")
    assert code == 2 and "hub snapshot of org/binonly" in text and "safetensors weights only" in text


def test_an_unreachable_hub_falls_back_to_the_cache(hub, cli, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # online mode, nothing listening: refused at once
    assert resolve_model("org/base") == hub / "models--org--base" / "snapshots" / COMMIT
    code, text = cli("inspect", "org/missing")
    assert code == 2 and "could not be fetched" in text and str(hub / "models--org--missing") in text

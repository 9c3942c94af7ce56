"""A portable mergekit export and model card: hub ids keep their revision (never this machine's snapshot paths),
no YAML anchors, a TIES / task-arithmetic plan refused before anything is written; `mergekit-yaml` runs the
export of a plan made from hub ids against a second cache folder (another machine's cache)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch
import yaml
from common import digest, run_cli
from safetensors.torch import load_file
from test_hub import COMMIT, add_to_hub_cache
from test_policies import _mergekit_or_skip, table_with

from spear_mm.planning.exports import mergekit_yaml
from spear_mm.planning.policies import make_plan


@pytest.fixture()
def hub_plan(tiny_pair, tmp_path, monkeypatch, capsys):
    """scores/ and plan.yaml + mk.yaml made from the hub ids org/base and org/adapted (offline, private cache)."""
    cache = tmp_path / "cache-a"
    add_to_hub_cache(cache, "org/base", tiny_pair[0], COMMIT)
    add_to_hub_cache(cache, "org/adapted", tiny_pair[1], COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    cli = lambda *a: run_cli(monkeypatch, capsys, *a)  # noqa: E731
    code, text = cli("analyze", "org/base", "org/adapted", "-o", "scores", "-j", "1")
    assert code == 0, text
    code, text = cli("plan", "scores", "--policy", "custom", "--layers", "0,0.3,0,0.9,0,0.6", "--embed", "0.5",
                     "-o", "plan.yaml", "--export-mergekit", "mk.yaml")  # fmt: skip
    assert code == 0, text
    return cli, cache


def test_the_export_names_hub_ids_with_their_revision_and_has_no_anchors(hub_plan, tmp_path):
    text = (tmp_path / "mk.yaml").read_text()
    config = yaml.safe_load(text)
    assert config["base_model"] == f"org/adapted@{COMMIT}"
    assert {s["model"] for sl in config["slices"] for s in sl["sources"]} == {
        f"org/adapted@{COMMIT}",
        f"org/base@{COMMIT}",
    }
    assert "snapshots" not in text and str(tmp_path) not in text
    assert "&id" not in text and "*id" not in text


def test_no_anchors_for_local_folders_either(tiny_pair):
    plan = make_plan(table_with([0.1, 3.0, 0.2, 2.0, 0.0, 1.0]), "custom", layer_ts=[0, 0.3, 0.55, 0.9, 0.2, 0.7])
    text = mergekit_yaml(plan, *tiny_pair)
    assert "&id" not in text and yaml.safe_load(text)["base_model"] == str(tiny_pair[1])


@pytest.mark.parametrize("method", ["ties", "task_arithmetic"])
def test_a_plan_mergekit_cannot_perform_is_refused_before_anything_is_written(hub_plan, tmp_path, method):
    cli, _ = hub_plan
    before = digest(tmp_path / "scores")
    code, text = cli("plan", "scores", "--method", method, "-o", "p2.yaml", "--export-mergekit", "mk2.yaml")
    assert code == 2 and f"not '{method}'" in text and "nothing was written" in text
    assert not (tmp_path / "p2.yaml").exists() and not (tmp_path / "mk2.yaml").exists()
    assert digest(tmp_path / "scores") == before


def test_the_model_card_is_portable(hub_plan, tiny_pair, tmp_path):
    cli, _ = hub_plan
    shutil.copytree(tiny_pair[1], tmp_path / "my-cpt")  # a hub base and a local adapted folder
    code, text = cli("merge", "org/base", "my-cpt", "--plan", "plan.yaml", "-o", "merged", "--force")
    assert code == 0, text
    card = (tmp_path / "merged" / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "transformers" and front["base_model_relation"] == "merge"
    assert front["base_model"] == ["org/base", "my-cpt"] and "slerp" in front["tags"]
    assert f"hub `org/base@{COMMIT}`" in card and "local folder `my-cpt`" in card
    assert str(tmp_path) not in card and "snapshots" not in card


def test_a_local_pair_card_names_folders_not_paths(tiny_pair, tmp_path, monkeypatch, capsys):
    code, text = run_cli(monkeypatch, capsys, "merge", *tiny_pair, "--t", "0.5", "-o", tmp_path / "m")
    assert code == 0, text
    card = (tmp_path / "m" / "README.md").read_text()
    assert str(tiny_pair[0].parent) not in card and "local folder `adapted`" in card


# mergekit 0.1.5 asks the hub for a repository's file list (`list_repo_files`) before it downloads, even when the
# revision is cached: offline, that one call is answered from the cache; everything else is mergekit's own.
OFFLINE_MERGEKIT = """
import sys
from pathlib import Path
import huggingface_hub
def list_repo_files(repo_id, repo_type="model", revision=None, **kw):
    return [p.name for p in Path(huggingface_hub.snapshot_download(repo_id, revision=revision)).iterdir()]
huggingface_hub.list_repo_files = list_repo_files
from mergekit.scripts.run_yaml import main
sys.argv = ["mergekit-yaml", *sys.argv[1:]]
sys.exit(main())
"""


@pytest.mark.slow  # ~20 s: mergekit's start-up
def test_mergekit_runs_the_hub_export_from_another_cache_folder(hub_plan, tmp_path, monkeypatch):
    """Another machine: the same hub ids in a cache at another path; mergekit fetches them by their revision."""
    py = _mergekit_or_skip()
    cli, cache = hub_plan
    other = tmp_path / "elsewhere" / "cache-b"
    shutil.copytree(cache, other, symlinks=True)
    shutil.rmtree(cache)  # nothing of the first cache's paths is left to lean on
    env = {"HF_HUB_CACHE": str(other), "HF_HUB_OFFLINE": "1", "PATH": str(py.parent), "HOME": str(tmp_path)}
    res = subprocess.run([str(py), "-c", OFFLINE_MERGEKIT, "mk.yaml", "mk-out"], capture_output=True, text=True,
                         timeout=600, env=env, cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    monkeypatch.setenv("HF_HUB_CACHE", str(other))
    code, text = cli("merge", "org/base", "org/adapted", "--plan", "plan.yaml", "-o", "ours")
    assert code == 0, text
    ours = load_file(tmp_path / "ours" / "model.safetensors")
    theirs = {k: v for f in sorted((tmp_path / "mk-out").glob("*.safetensors")) for k, v in load_file(f).items()}
    assert set(theirs) <= set(ours)
    for name, w in theirs.items():
        rel = float((w.double() - ours[name].double()).norm() / ours[name].double().norm().clamp_min(1e-12))
        assert rel < 1e-5, (name, rel)
    card = (tmp_path / "mk-out" / "README.md").read_text()
    assert "org/adapted" in card and "base_model: []" not in card
    assert torch.is_tensor(next(iter(theirs.values())))

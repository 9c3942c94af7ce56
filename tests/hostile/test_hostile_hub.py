"""Issue 23 item 1: hub ids give a usable merged model. A hub snapshot's files are links into the repository's
`blobs/`; the merge copies config, tokenizer and generation files by resolving links that stay inside that
repository folder, and still refuses links that lead elsewhere (another repository of the cache, or outside
it). The cache is laid out as huggingface_hub does (tests/test_hub.py), read with HF_HUB_OFFLINE=1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_hub import COMMIT, add_to_hub_cache
from transformers import AutoModelForCausalLM, AutoTokenizer


@pytest.fixture()
def hub(tiny_pair, tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hub-cache"
    add_to_hub_cache(cache, "org/base", tiny_pair[0], COMMIT)
    add_to_hub_cache(cache, "org/adapted", tiny_pair[1], COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # `org/base` is not a local folder here
    return cache


def test_a_hub_id_merge_loads_with_transformers(hub, tiny_pair, tmp_path, cli, untouched):
    check = untouched(hub)
    out = tmp_path / "mh"
    code, text = cli("merge", "org/base", "org/adapted", "--t", "0.5", "-o", out)
    check()
    assert code == 0, text
    side = sorted(p.name for p in tiny_pair[1].iterdir() if not p.name.endswith(".safetensors"))
    assert side and all((out / name).is_file() and not (out / name).is_symlink() for name in side), side
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    assert not any("links outside" in n for n in json.loads((out / "merge_report.json").read_text())["notes"])
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == 6 and len(tokenizer) == model.config.vocab_size


@pytest.mark.parametrize("target", ["another repo's blob", "outside the cache"])
def test_a_snapshot_link_leaving_its_repo_is_not_copied(hub, tmp_path, cli, untouched, target):
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of any model\n")
    other = next((hub / "models--org--base" / "blobs").iterdir())
    snap = hub / "models--org--adapted" / "snapshots" / COMMIT
    link = snap / "chat_template.jinja"
    link.symlink_to(Path("../../../models--org--base/blobs") / other.name if target != "outside the cache" else secret)
    check = untouched(hub, secret)
    out = tmp_path / "mh"
    code, text = cli("merge", "org/base", "org/adapted", "--t", "0.5", "-o", out)
    check()
    assert code == 0, text
    assert (out / "config.json").is_file() and not (out / "chat_template.jinja").exists()
    notes = json.loads((out / "merge_report.json").read_text())["notes"]
    assert any("chat_template.jinja" in n and "links outside" in n for n in notes), notes


def test_a_hub_id_run_keeps_its_models_on_a_rerun(hub, tmp_path, cli, untouched, note):
    """`run` with hub ids: the written model (here every candidate, --keep-all) loads, and a re-run reuses it
    instead of merging it again (its step needs the config.json the side-file copy now brings)."""
    check = untouched(hub)
    run_dir = tmp_path / "run"
    args = ["run", "org/base", "org/adapted", "-o", run_dir, "--suite", "demo", "--limit", "2", "--no-baselines",
            "--policies", "balanced", "--keep-all"]  # fmt: skip
    code, text = cli(*args)
    assert code == 0, text
    model = run_dir / "models" / "balanced"
    AutoModelForCausalLM.from_pretrained(model)
    AutoTokenizer.from_pretrained(model)
    before = (model / "model.safetensors").stat()
    code, text = cli(*args)
    check()
    assert code == 0, text
    after = (model / "model.safetensors").stat()
    rewritten = (before.st_ino, before.st_mtime_ns) != (after.st_ino, after.st_mtime_ns)
    note("outputs", changed=rewritten)
    assert not rewritten, "the run's model was merged again"
    stages = json.loads((run_dir / "summary.json").read_text())["stages"]
    stage = next(s for s in stages if s["name"].startswith("write chosen model"))
    assert stage["detail"].startswith("0 written"), stage

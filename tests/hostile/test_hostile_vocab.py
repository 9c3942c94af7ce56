"""Issue 12, item 8: a vocabulary extension during CPT is supported end to end by `analyze` and `run`: the shared
rows are scored, merged and evaluated, and the new rows are kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from common import make_tiny_model, make_tokenizer, perturb_
from safetensors.torch import load_file

NEW_TOKENS = ["<ticker>", "<cusip>", "<isin>", "<bps>", "<ebitda>"]


@pytest.fixture(scope="module")
def vocab_pair(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("vocab")
    tok = make_tokenizer()
    model = make_tiny_model("llama", vocab_size=len(tok))
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    perturb_(model, {3: 0.5, 5: 0.5})
    tok.add_tokens(NEW_TOKENS)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(root / "adapted")
    tok.save_pretrained(root / "adapted")
    return root / "base", root / "adapted"


def test_analyze_scores_the_shared_rows(vocab_pair, tmp_path, cli):
    code, text = cli("analyze", *vocab_pair, "-o", tmp_path / "refused")
    assert code == 2 and "--allow-vocab-extension" in text, text
    code, text = cli("analyze", *vocab_pair, "-o", tmp_path / "scores", "--allow-vocab-extension")
    assert code == 0, text
    rows = {m["name"]: m for m in json.loads((tmp_path / "scores" / "scores.json").read_text())["modules"]}
    embed = rows["model.embed_tokens.weight"]
    assert embed["shape"][0] == 300 and 0 < embed["rel_change"] < 1  # the shared rows, compared row for row


def test_run_merges_and_evaluates_with_the_new_rows_kept(vocab_pair, tmp_path, cli):
    base, adapted = vocab_pair
    run_dir = tmp_path / "run"
    code, text = cli("run", base, adapted, "-o", run_dir, "--suite", "demo", "--limit", "4", "--no-baselines",
                     "--policies", "balanced", "--keep-all")  # fmt: skip
    assert code == 2 and "--allow-vocab-extension" in text, text
    code, text = cli("run", base, adapted, "-o", run_dir, "--suite", "demo", "--limit", "4", "--no-baselines",
                     "--policies", "balanced", "--keep-all", "--allow-vocab-extension")  # fmt: skip
    assert code == 0, text
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["candidates"]["balanced"]["retention"] is not None  # evaluated
    assert (run_dir / "eval" / "balanced.json").is_file()
    merged = load_file(run_dir / "models" / "balanced" / "model.safetensors")
    a, b = load_file(adapted / "model.safetensors"), load_file(base / "model.safetensors")
    rows = b["model.embed_tokens.weight"].shape[0]
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert merged[name].shape == a[name].shape
        assert merged[name][rows:].equal(a[name][rows:])  # the new rows are the adapted model's
    restored = [
        i
        for i in (3, 5)
        if not merged[f"model.layers.{i}.mlp.up_proj.weight"].equal(a[f"model.layers.{i}.mlp.up_proj.weight"])
    ]  # noqa: E501
    assert restored, "the balanced plan restores a drifted layer"

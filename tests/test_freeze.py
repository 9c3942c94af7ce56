"""Freezing for CPT re-runs: patterns, YAML round trip, requires_grad on real pico models."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from common import make_tiny_model

from spear_mm.errors import SpearError
from spear_mm.planning.freeze import (
    apply_freeze,
    freeze_patterns,
    layer_index,
    load_freeze_yaml,
    write_freeze_yaml,
)


def _frozen_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize("frozen", [[], [0], [3, 5], [0, 1, 2, 3, 4, 5]])
def test_freezes_exactly_the_listed_layers(frozen: list[int]) -> None:
    model = make_tiny_model("llama", tie_word_embeddings=False)
    summary = apply_freeze(model, freeze_patterns(frozen))
    assert summary.frozen_layers == frozen
    assert _frozen_names(model) == {n for n, _ in model.named_parameters() if layer_index(n) in frozen}
    assert summary.total_params == sum(p.numel() for p in model.parameters())
    assert summary.frozen_params == sum(p.numel() for n, p in model.named_parameters() if layer_index(n) in frozen)
    assert summary.unmatched_patterns == ([] if len(frozen) < 6 else [freeze_patterns(frozen)[0]])


def test_layer_10_is_not_layer_1() -> None:
    model = make_tiny_model("llama", num_hidden_layers=12)
    summary = apply_freeze(model, freeze_patterns([1]))
    assert summary.frozen_layers == [1]
    assert all(p.requires_grad for n, p in model.named_parameters() if ".layers.1" in n and ".layers.1." not in n)


def test_non_layer_groups_llama_and_gpt2() -> None:
    llama = make_tiny_model("llama", tie_word_embeddings=False)
    apply_freeze(llama, freeze_patterns([2], freeze_embeddings=True, freeze_final_norm=True))
    assert {n for n in _frozen_names(llama) if layer_index(n) is None} == {
        "model.embed_tokens.weight",
        "model.norm.weight",
    }
    apply_freeze(llama, freeze_patterns([], freeze_head=True))
    assert _frozen_names(llama) == {"lm_head.weight"}
    gpt2 = make_tiny_model("gpt2", n_embd=32, n_layer=3, n_head=2)
    patterns = freeze_patterns([0], freeze_embeddings=True, freeze_head=True, freeze_final_norm=True)
    summary = apply_freeze(gpt2, patterns)  # wte is tied to lm_head: frozen only when both are
    assert summary.frozen_layers == [0]
    assert {n for n in _frozen_names(gpt2) if layer_index(n) is None} == {
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.ln_f.weight",
        "transformer.ln_f.bias",
    }


def test_tied_embedding_trains_if_either_alias_does() -> None:
    model = make_tiny_model("llama", tie_word_embeddings=True)
    apply_freeze(model, freeze_patterns([], freeze_embeddings=True))
    assert model.model.embed_tokens.weight.requires_grad  # still trainable as the head
    apply_freeze(model, freeze_patterns([], freeze_embeddings=True, freeze_head=True))
    assert not model.model.embed_tokens.weight.requires_grad


def test_patterns_mean_the_same_to_axolotl() -> None:
    """axolotl's Spectrum reader escapes every '.' and matches from the start of the name."""
    model = make_tiny_model("llama", tie_word_embeddings=False)
    patterns = freeze_patterns([1, 4], freeze_head=True, freeze_final_norm=True)
    apply_freeze(model, patterns)
    axolotl = [re.compile(p.replace(".", "\\.")) for p in patterns]
    for name, p in model.named_parameters():
        assert any(rx.match(name) for rx in axolotl) == p.requires_grad, name


def test_yaml_round_trip_and_spectrum_file(tmp_path: Path) -> None:
    patterns = freeze_patterns([3, 5], freeze_embeddings=True)
    path = write_freeze_yaml(tmp_path / "freeze.yaml", patterns, comment="frozen layers: 3, 5")
    assert load_freeze_yaml(path) == patterns
    assert yaml.safe_load(path.read_text()) == {"unfrozen_parameters": patterns}
    assert path.read_text().startswith("# spear-mm freeze list")
    spectrum = tmp_path / "spectrum.yaml"  # the shape of Spectrum's snr_results_*_unfrozenparameters_*.yaml
    spectrum.write_text(
        "unfrozen_parameters:\n- ^lm_head.weight$\n- ^model.embed_tokens.weight$\n"
        "# mlp.down_proj layers\n- model.layers.0.mlp.down_proj\n- model.layers.5.mlp.down_proj\n"
    )
    model = make_tiny_model("llama", tie_word_embeddings=False)
    summary = apply_freeze(model, load_freeze_yaml(spectrum))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "lm_head.weight",
        "model.embed_tokens.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.5.mlp.down_proj.weight",
    }
    assert summary.frozen_layers == [1, 2, 3, 4] and summary.trainable_tensors == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("unfrozen_parameters: ['(unclosed']", "invalid regex"),
        ("spear_mm_plan: 1\nnum_layers: 4\n", "spear-mm plan"),
        ("unfrozen_parameters: []\nextra: 1\n", "unknown keys"),
        ("unfrozen_parameters: [1]\n", "non-empty strings"),
        ("unfrozen_parameters: [\n", "not valid YAML"),
    ],
)
def test_bad_freeze_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpearError, match=message) as info:
        load_freeze_yaml(path)
    assert str(path) in str(info.value)


def test_bad_layer_index() -> None:
    with pytest.raises(SpearError, match="non-negative"):
        freeze_patterns([-1])

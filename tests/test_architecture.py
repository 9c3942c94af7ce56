"""Tensor name -> (layer, module type) for every family in the table, on pico models saved in code."""

from __future__ import annotations

import json
import logging

import pytest
from common import make_tiny_model

from spear_mm.errors import SpearError
from spear_mm.io.architecture import for_model_type, known_model_types, layer_map, num_layers_of
from spear_mm.io.checkpoint import Checkpoint

LLAMA_LIKE = {"attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down", "norm"}
FUSED_QKV = {"attn.qkv", "attn.o", "mlp.up", "mlp.down", "norm"}
# model_type -> (family, module types of every layer, has an untied head tensor)
CASES = {
    "llama": ("llama", LLAMA_LIKE, True),
    "mistral": ("llama", LLAMA_LIKE, True),
    "qwen2": ("llama", LLAMA_LIKE, True),
    "qwen3": ("llama", LLAMA_LIKE, True),
    "gemma": ("llama", LLAMA_LIKE, False),
    "gemma2": ("llama", LLAMA_LIKE, False),
    "gemma3_text": ("llama", LLAMA_LIKE, False),
    "phi3": ("llama", {"attn.qkv", "attn.o", "mlp.gate_up", "mlp.down", "norm"}, True),
    "gpt2": ("gpt2", FUSED_QKV, False),
    "gpt_neox": ("gpt_neox", FUSED_QKV, True),
    "falcon": ("falcon", FUSED_QKV, False),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One saved pico model per family (built lazily, once per module)."""
    cache = {}

    def get(model_type: str):
        if model_type not in cache:
            folder = tmp_path_factory.mktemp(model_type)
            make_tiny_model(model_type).save_pretrained(folder)
            cache[model_type] = Checkpoint.open(folder)
        return cache[model_type]

    return get


@pytest.mark.parametrize("model_type", list(CASES))
def test_every_tensor_of_each_family_is_classified(saved, model_type, caplog):
    family, modules, has_head = CASES[model_type]
    ckpt = saved(model_type)
    with caplog.at_level(logging.WARNING):
        params = layer_map(ckpt.names, ckpt.model_type)
    assert not caplog.records, "a known family must not fall back to the generic rules"
    assert for_model_type(ckpt.model_type).family == family
    layers = num_layers_of(ckpt.config)
    assert layers == 6
    assert sorted({p.layer for p in params.values() if p.group == "layer"}) == list(range(layers))
    assert not [n for n, p in params.items() if p.group == "other"]
    for i in range(layers):
        got = {p.module for p in params.values() if p.layer == i}
        assert got == modules, (i, got)
    groups = [p.group for p in params.values()]
    assert groups.count("embed") >= 1 and groups.count("final_norm") >= 1
    assert groups.count("head") == int(has_head)  # tied embeddings: no head tensor in the file
    assert all(p.is_norm for p in params.values() if p.group == "final_norm")


def test_names_map_to_the_expected_layer_and_module():
    arch = for_model_type("llama")
    p = arch.classify("model.layers.17.self_attn.k_proj.weight")
    assert (p.group, p.layer, p.module) == ("layer", 17, "attn.k")
    assert arch.classify("model.layers.3.mlp.down_proj.weight").module == "mlp.down"
    assert arch.classify("model.embed_tokens.weight").group == "embed"
    assert arch.classify("lm_head.weight").group == "head"
    assert arch.classify("model.norm.weight").group == "final_norm"
    gpt2 = for_model_type("gpt2")
    p = gpt2.classify("transformer.h.4.attn.c_attn.weight")
    assert (p.layer, p.module) == (4, "attn.qkv")
    assert gpt2.classify("transformer.h.4.mlp.c_proj.bias").module == "mlp.down"


def test_known_model_types_cover_the_issue_families():
    known = set(known_model_types())
    assert {
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3",
        "phi3",
        "gpt2",
        "gpt_neox",
        "falcon",
    } <= known


def test_unknown_family_falls_back_to_generic_rules_with_a_warning(saved, tmp_path, caplog):
    ckpt = saved("llama")
    config = dict(ckpt.config, model_type="mystery_lm")
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").symlink_to(ckpt.infos["model.embed_tokens.weight"].file)
    other = Checkpoint.open(tmp_path)
    with caplog.at_level(logging.WARNING):
        params = layer_map(other.names, other.model_type)
    assert any("mystery_lm" in r.getMessage() and "generic" in r.getMessage() for r in caplog.records)
    assert sorted({p.layer for p in params.values() if p.layer is not None}) == list(range(6))
    assert params["model.layers.2.self_attn.q_proj.weight"].module == "attn.q"
    assert params["model.layers.2.mlp.gate_proj.weight"].module == "mlp.gate"
    assert params["model.layers.2.input_layernorm.weight"].module == "norm"
    assert params["model.embed_tokens.weight"].group == "embed"
    assert params["lm_head.weight"].group == "head"
    for prefix in ("blocks", "h"):
        p = for_model_type("mystery_lm").classify(f"transformer.{prefix}.7.attn.out_proj.weight")
        assert (p.layer, p.module) == (7, "attn.o")


def test_no_recognisable_layer_is_an_error_naming_the_table():
    with pytest.raises(SpearError, match="architectures.json"):
        layer_map(["encoder.stage0.conv.weight", "classifier.weight"], "mystery_cnn")

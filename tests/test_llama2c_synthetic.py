"""The llama2.c converter on a checkpoint this test writes itself (runs everywhere, unlike tests/test_llama2c.py,
which needs ../shared/models): a pico HF Llama is written in llama2.c's v0 format (7 int32s, then float32 arrays
in llama2.c's order), converted back, and compared weight by weight and logit by logit."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from common import make_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from spear_mm.errors import SpearError
from spear_mm.io.llama2c import ROPE_THETA, convert_llama2c, read_llama2c, reference_logits

SEQ_LEN = 32
PIECES = ["<unk>", "\n<s>\n", "\n</s>\n", *(f"<0x{b:02X}>" for b in range(256)), " ", *"abcdefghijklmnopqrstuvwxyz."]
PIECES += ["th", "he", " t", "the", " the", "an", " c", "at", " cat"]  # merges, scored by rank below


def _tiny_llama(tied: bool):
    """A pico Llama with GQA and weights far from their init (so a wrong permutation or order shows)."""
    model = make_tiny_model(
        vocab_size=len(PIECES),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=SEQ_LEN,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.2 * noise if name.endswith("norm.weight") else 0.3 * noise)
    return model


def _interleave(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF's rotate-half rows of a q/k projection back to llama2.c's interleaved pairs (the converter's inverse)."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def write_llama2c(model, path: Path) -> Path:
    """`model` as a llama2.c v0 checkpoint: header (vocab negative when the classifier is stored), then arrays."""
    cfg, sd = model.config, {k: v.detach().float() for k, v in model.state_dict().items()}
    n, hd = cfg.num_hidden_layers, cfg.hidden_size // cfg.num_attention_heads

    def layers(name: str, fn=lambda w: w) -> torch.Tensor:
        return torch.stack([fn(sd[f"model.layers.{i}.{name}.weight"]) for i in range(n)])

    angles = torch.outer(torch.arange(SEQ_LEN).double(), 1 / ROPE_THETA ** (torch.arange(0, hd, 2).double() / hd))
    arrays = [
        sd["model.embed_tokens.weight"],
        layers("input_layernorm"),
        layers("self_attn.q_proj", lambda w: _interleave(w, cfg.num_attention_heads)),
        layers("self_attn.k_proj", lambda w: _interleave(w, cfg.num_key_value_heads)),
        layers("self_attn.v_proj"),
        layers("self_attn.o_proj"),
        layers("post_attention_layernorm"),
        layers("mlp.gate_proj"),
        layers("mlp.down_proj"),
        layers("mlp.up_proj"),
        sd["model.norm.weight"],
        angles.cos(),
        angles.sin(),
    ]
    tied = cfg.tie_word_embeddings
    arrays += [] if tied else [sd["lm_head.weight"]]
    vocab = cfg.vocab_size if tied else -cfg.vocab_size
    header = (cfg.hidden_size, cfg.intermediate_size, n, cfg.num_attention_heads, cfg.num_key_value_heads)
    body = b"".join(np.asarray(a.float().numpy(), dtype="<f4").tobytes() for a in arrays)
    path.write_bytes(struct.pack("<7i", *header, vocab, SEQ_LEN) + body)
    return path


def write_tokenizer(path: Path) -> Path:
    """A llama2.c `tok*.bin`: max piece length, then (score, length, bytes) per piece; merges score higher later."""
    out = [struct.pack("<i", max(len(p.encode()) for p in PIECES))]
    for i, piece in enumerate(PIECES):
        raw = piece.encode()
        out.append(struct.pack("<fi", float(i - len(PIECES)) if len(piece) > 1 else -1e6, len(raw)) + raw)
    path.write_bytes(b"".join(out))
    return path


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "own-classifier"])
def written(request, tmp_path_factory) -> tuple[object, Path, Path, Path]:
    root = tmp_path_factory.mktemp("llama2c")
    model = _tiny_llama(tied=request.param)
    bin_path, tok_path = write_llama2c(model, root / "pico.bin"), write_tokenizer(root / "tok.bin")
    return model, bin_path, tok_path, convert_llama2c(bin_path, tok_path, root / "hf")


def test_the_converted_model_has_the_same_weights(written) -> None:
    model, _, _, out = written
    converted = AutoModelForCausalLM.from_pretrained(out)
    cfg = converted.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.num_key_value_heads) == ("llama", 2, 2)
    assert cfg.tie_word_embeddings == model.config.tie_word_embeddings
    mine, theirs = converted.state_dict(), model.state_dict()
    assert sorted(mine) == sorted(theirs)
    for name, w in theirs.items():
        assert torch.equal(mine[name], w), name  # a float32 round trip: bit for bit


def test_the_converted_model_gives_the_same_logits(written) -> None:
    model, bin_path, _, out = written
    converted = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = [1, 291, 295, 259, 262, 275, 5, 290, 284, 259, 263]
    with torch.no_grad():
        logits = converted(torch.tensor([ids])).logits[0].double()
        original = model(torch.tensor([ids])).logits[0].double()
    assert logits.std() > 0.5  # far from uniform: the comparison below means something
    assert (logits - original).abs().max() < 1e-5
    header, weights = read_llama2c(bin_path)
    assert (logits - reference_logits(header, weights, ids)).abs().max() < 1e-4  # llama2.c's own forward pass


def test_the_converted_tokenizer_merges_and_falls_back_to_bytes(written) -> None:
    _, _, _, out = written
    tok = AutoTokenizer.from_pretrained(out)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 0)
    ids = tok("the cat é").input_ids
    assert ids[:3] == [1, PIECES.index(" the"), PIECES.index(" cat")]
    assert ids[-2:] == [3 + 0xC3, 3 + 0xA9]  # 'é' is not a piece: its UTF-8 bytes
    assert tok.decode(ids, skip_special_tokens=True) == "the cat é"


def test_a_damaged_synthetic_file_is_a_clear_error(written, tmp_path: Path) -> None:
    model, bin_path, tok_path, _ = written
    data = bin_path.read_bytes()
    (tmp_path / "short.bin").write_bytes(data[:-4])
    with pytest.raises(SpearError, match="truncated"):
        read_llama2c(tmp_path / "short.bin")
    (tmp_path / "v1.bin").write_bytes(struct.pack("<I", 0x616B3432) + data[4:])
    with pytest.raises(SpearError, match="--version 0"):
        read_llama2c(tmp_path / "v1.bin")
    cfg = model.config
    end = len(data) - (0 if cfg.tie_word_embeddings else 4 * cfg.vocab_size * cfg.hidden_size)  # freq_sin's end
    (tmp_path / "rope.bin").write_bytes(data[: end - 8] + struct.pack("<2f", 9.0, 9.0) + data[end:])
    with pytest.raises(SpearError, match="RoPE tables do not match"):
        convert_llama2c(tmp_path / "rope.bin", tok_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_cli_converts_the_synthetic_file(written, tmp_path: Path, monkeypatch, capsys) -> None:
    from common import run_cli

    model, bin_path, tok_path, _ = written
    code, text = run_cli(monkeypatch, capsys, "convert-llama2c", bin_path, tok_path, "-o", tmp_path / "hf")
    assert code == 0, text
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert all(torch.equal(converted.state_dict()[k], w) for k, w in model.state_dict().items())
    code, text = run_cli(monkeypatch, capsys, "convert-llama2c", bin_path, tok_path, "-o", tmp_path / "hf")
    assert code == 2 and "already exists" in text, text

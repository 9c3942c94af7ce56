"""The llama2.c converter on the real stories260K checkpoint: weights, forward pass, tokenizer, errors."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spear_mm.errors import SpearError
from spear_mm.io.llama2c import convert_llama2c, read_llama2c, reference_logits

MODELS = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"
BIN, TOK = MODELS / "stories260K.bin", MODELS / "tok512.bin"
pytestmark = pytest.mark.skipif(
    not BIN.exists() or not TOK.exists(), reason=f"stories260K checkpoint not found under {MODELS}"
)

# Written for this test in the TinyStories style (not taken from the data set).
STORY = (
    "Once upon a time, there was a small dog named Max. Max liked to run in the big green park with his "
    "friend Sam. One day, Max found a shiny red ball under a tree. He was very happy. He took the ball to "
    "Sam, and they played all day. When the sun went down, they went home and ate dinner."
)
TEXTS = [
    STORY,
    "Hello world!  Two  spaces\nnew line\n\nTom's café costs $3.50 — naïve 日本 🙂",
    " leading space and trailing space ",
    "Revenue rose 12 percent to 4.2 billion dollars.",
    "a",
]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    return convert_llama2c(BIN, TOK, tmp_path_factory.mktemp("llama2c") / "stories260K")


def _llama2c_encode(text: str) -> list[int]:
    """A port of llama2.c run.c `encode` (dummy prefix, per-codepoint lookup, byte fallback, best-score merge)."""
    data, pieces, offset = TOK.read_bytes(), [], 4
    while offset < len(data):
        score, length = struct.unpack_from("<fi", data, offset)
        pieces.append((data[offset + 8 : offset + 8 + length].decode(), score))
        offset += 8 + length
    ids = {p: i for i, (p, _) in enumerate(pieces)}
    tokens = []
    for ch in " " + text if text else "":
        tokens += [ids[ch]] if ch in ids else [b + 3 for b in ch.encode()]
    while True:
        best = max(
            ((pieces[ids[m]][1], -i, ids[m]) for i in range(len(tokens) - 1)
             if (m := pieces[tokens[i]][0] + pieces[tokens[i + 1]][0]) in ids),
            default=None,
        )  # fmt: skip
        if best is None:
            return [1, *tokens]
        i = -best[1]
        tokens[i : i + 2] = [best[2]]


def test_loads_as_hf_llama(converted: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(converted)
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        "llama",
        5,
        8,
        4,
    )
    assert cfg.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == 260_032  # 260K, embedding tied


def test_logits_match_llama2c_forward(converted: Path) -> None:
    tok = AutoTokenizer.from_pretrained(converted)
    model = AutoModelForCausalLM.from_pretrained(converted).eval()
    ids = tok(STORY).input_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    header, weights = read_llama2c(BIN)
    assert (logits - reference_logits(header, weights, ids)).abs().max() < 1e-4
    nll = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]))
    assert nll.exp() < 20, f"perplexity {nll.exp():.1f} on a TinyStories-like story"


def test_greedy_generation_is_a_story(converted: Path) -> None:
    tok = AutoTokenizer.from_pretrained(converted)
    model = AutoModelForCausalLM.from_pretrained(converted).eval()
    out = model.generate(**tok("Once upon a time", return_tensors="pt"), max_new_tokens=40, do_sample=False)
    text = tok.decode(out[0], skip_special_tokens=True)
    assert text.startswith("Once upon a time")
    words = set(text.lower().replace(",", " ").replace(".", " ").split())
    assert len(words & {"there", "was", "little", "girl", "boy", "named", "she", "he", "play", "day"}) >= 3, text


def test_tokenizer_matches_llama2c_and_round_trips(converted: Path) -> None:
    tok = AutoTokenizer.from_pretrained(converted)
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id) == (1, 2, 0, 0)
    for text in TEXTS:
        ids = tok(text).input_ids
        assert ids == _llama2c_encode(text), text
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_bad_inputs(tmp_path: Path, converted: Path) -> None:
    truncated = tmp_path / "short.bin"
    truncated.write_bytes(BIN.read_bytes()[:-4])
    with pytest.raises(SpearError, match="truncated"):
        convert_llama2c(truncated, TOK, tmp_path / "a")
    with pytest.raises(SpearError, match="not a llama2.c tokenizer|bytes left"):
        convert_llama2c(BIN, BIN, tmp_path / "b")
    with pytest.raises(SpearError, match="already exists"):
        convert_llama2c(BIN, TOK, converted)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["short.bin"]  # no temporary folders left behind


def test_cli_takes_the_tokenizer_as_the_readme_writes_it(tmp_path: Path, monkeypatch, capsys) -> None:
    from common import run_cli

    code, text = run_cli(monkeypatch, capsys, "convert-llama2c", BIN, TOK, "-o", tmp_path / "a")
    assert code == 0 and (tmp_path / "a" / "tokenizer.json").is_file(), text
    code, text = run_cli(monkeypatch, capsys, "convert-llama2c", BIN, "--tokenizer", TOK, "-o", tmp_path / "b")
    assert code == 0 and (tmp_path / "b" / "config.json").is_file(), text
    code, text = run_cli(monkeypatch, capsys, "convert-llama2c", BIN, "-o", tmp_path / "c")
    assert code == 2 and "MODEL.bin TOK.bin -o OUT" in text and not (tmp_path / "c").exists()

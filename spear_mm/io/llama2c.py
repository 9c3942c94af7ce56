"""Convert a llama2.c "v0" checkpoint (e.g. karpathy's stories260K) into a Hugging Face Llama folder.

Format (llama2.c `export.py --version 0`): 7 int32 header fields, then float32 arrays in the order
token embedding, attention norms, wq, wk, wv, wo, ffn norms, w1, w2, w3, final norm, freq_cos, freq_sin
[, classifier when the header's vocab size is negative]. llama2.c applies RoPE to interleaved pairs; HF
Llama rotates halves, so the wq/wk rows are permuted per head (as in transformers'
`convert_llama_weights_to_hf.py`). The tokenizer file (`tok*.bin`) is a sentencepiece BPE vocabulary:
merges are derived from it ordered by piece score, which reproduces llama2.c's greedy encoder.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spear_mm.errors import SpearError
from spear_mm.io.outputs import AtomicDir, check_not_input

_MAGIC = 0x616B3432  # "ak42": llama2.c export versions >= 1 start with it
_HEADER = struct.Struct("<7i")
_SPECIALS = {0: "<unk>", 1: "<s>", 2: "</s>"}
ROPE_THETA = 10000.0
NORM_EPS = 1e-5


@dataclass(frozen=True)
class Llama2cHeader:
    """The 7 header fields; `shared_classifier` is False when the file stores its own output matrix."""

    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """Array names and shapes in file order (layers stacked on the first axis)."""
        d, hid, n, v, hd = self.dim, self.hidden_dim, self.n_layers, self.vocab_size, self.head_dim
        out = [
            ("tok_embeddings", (v, d)),
            ("attention_norm", (n, d)),
            ("wq", (n, d, d)),
            ("wk", (n, self.kv_dim, d)),
            ("wv", (n, self.kv_dim, d)),
            ("wo", (n, d, d)),
            ("ffn_norm", (n, d)),
            ("w1", (n, hid, d)),
            ("w2", (n, d, hid)),
            ("w3", (n, hid, d)),
            ("norm", (d,)),
            ("freq_cos", (self.seq_len, hd // 2)),
            ("freq_sin", (self.seq_len, hd // 2)),
        ]
        if not self.shared_classifier:
            out.append(("output", (v, d)))
        return out


def read_llama2c(bin_path: Path) -> tuple[Llama2cHeader, dict[str, torch.Tensor]]:
    """Read a v0 llama2.c checkpoint into float32 tensors keyed by llama2.c's names; validates the size."""
    bin_path = Path(bin_path)
    data = _read_bytes(bin_path)
    if len(data) < _HEADER.size:
        raise SpearError(f"{bin_path}: too short for a llama2.c checkpoint ({len(data)} bytes).")
    if struct.unpack_from("<I", data)[0] == _MAGIC:
        raise SpearError(
            f"{bin_path}: llama2.c export version >= 1 (magic 'ak42'); only the legacy v0 fp32 format is "
            "supported — re-export with llama2.c's `export.py --version 0`."
        )
    dim, hidden, layers, heads, kv_heads, vocab, seq = _HEADER.unpack_from(data)
    header = Llama2cHeader(dim, hidden, layers, heads, kv_heads, abs(vocab), seq, shared_classifier=vocab > 0)
    if min(dim, hidden, layers, heads, kv_heads, abs(vocab), seq) <= 0 or dim % heads or heads % kv_heads:
        raise SpearError(f"{bin_path}: implausible llama2.c header {_HEADER.unpack_from(data)}.")
    shapes = header.shapes()
    expected = _HEADER.size + 4 * sum(math.prod(s) for _, s in shapes)
    if len(data) != expected:
        raise SpearError(
            f"{bin_path}: {len(data)} bytes, but header {_HEADER.unpack_from(data)} implies {expected} "
            "for a v0 fp32 export; the file is truncated or not a llama2.c v0 checkpoint."
        )
    flat = np.frombuffer(data, dtype="<f4", offset=_HEADER.size)
    tensors, offset = {}, 0
    for name, shape in shapes:
        n = math.prod(shape)
        tensors[name] = torch.from_numpy(flat[offset : offset + n].copy()).reshape(shape)
        offset += n
    _check_rope(bin_path, header, tensors)
    return header, tensors


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SpearError(f"{path}: cannot read ({exc.strerror}); check the path.") from exc


def _check_rope(path: Path, header: Llama2cHeader, t: dict[str, torch.Tensor]) -> None:
    """The stored RoPE tables must be llama2.c's theta-10000 tables, since HF recomputes them."""
    hd = header.head_dim
    freqs = 1.0 / ROPE_THETA ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    angles = torch.outer(torch.arange(header.seq_len, dtype=torch.float64), freqs)
    err = max((t["freq_cos"] - angles.cos()).abs().max(), (t["freq_sin"] - angles.sin()).abs().max())
    if err > 1e-4:
        raise SpearError(f"{path}: stored RoPE tables do not match rope_theta={ROPE_THETA} (max diff {err:.2e}).")


def _permute_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a q/k projection from interleaved-pair RoPE order to HF's rotate-half order, per head."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def to_hf_state_dict(header: Llama2cHeader, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map llama2.c arrays onto `LlamaForCausalLM` parameter names (w1/w3/w2 = gate/up/down)."""
    sd = {"model.embed_tokens.weight": t["tok_embeddings"], "model.norm.weight": t["norm"]}
    for i in range(header.n_layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = t["attention_norm"][i]
        sd[p + "post_attention_layernorm.weight"] = t["ffn_norm"][i]
        sd[p + "self_attn.q_proj.weight"] = _permute_rotary(t["wq"][i], header.n_heads)
        sd[p + "self_attn.k_proj.weight"] = _permute_rotary(t["wk"][i], header.n_kv_heads)
        sd[p + "self_attn.v_proj.weight"] = t["wv"][i]
        sd[p + "self_attn.o_proj.weight"] = t["wo"][i]
        sd[p + "mlp.gate_proj.weight"] = t["w1"][i]
        sd[p + "mlp.down_proj.weight"] = t["w2"][i]
        sd[p + "mlp.up_proj.weight"] = t["w3"][i]
    sd["lm_head.weight"] = t["tok_embeddings"] if header.shared_classifier else t["output"]
    return {k: v.contiguous() for k, v in sd.items()}


def hf_config(header: Llama2cHeader):
    """The equivalent `LlamaConfig` (bos=1, eos=2, pad=unk=0)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=header.vocab_size,
        hidden_size=header.dim,
        intermediate_size=header.hidden_dim,
        num_hidden_layers=header.n_layers,
        num_attention_heads=header.n_heads,
        num_key_value_heads=header.n_kv_heads,
        head_dim=header.head_dim,
        max_position_embeddings=header.seq_len,
        rms_norm_eps=NORM_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        tie_word_embeddings=header.shared_classifier,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        hidden_act="silu",
        dtype="float32",
    )


def read_tokenizer(path: Path, vocab_size: int) -> list[tuple[str, float]]:
    """Read a llama2.c `tok*.bin` into sentencepiece-style (piece, score); spaces become '▁'."""
    path = Path(path)
    data = _read_bytes(path)
    pieces, offset = [], 4
    try:
        for i in range(vocab_size):
            score, length = struct.unpack_from("<fi", data, offset)
            raw = data[offset + 8 : offset + 8 + length]
            if len(raw) != length:
                raise struct.error("truncated piece")
            offset += 8 + length
            pieces.append((_SPECIALS.get(i) or raw.decode("utf-8").replace(" ", "▁"), score))
    except (struct.error, UnicodeDecodeError) as exc:
        raise SpearError(
            f"{path}: not a llama2.c tokenizer for a {vocab_size}-token model ({exc} at piece {len(pieces)}); "
            "pass the tok*.bin written by llama2.c's tokenizer.py for this checkpoint."
        ) from exc
    if offset != len(data):
        raise SpearError(f"{path}: {len(data) - offset} bytes left after {vocab_size} pieces; wrong tokenizer?")
    return pieces


def bpe_merges(pieces: list[tuple[str, float]]) -> list[tuple[str, str]]:
    """Merges for every piece splittable into two vocabulary pieces, ranked by the merged piece's score."""
    ids = {p: i for i, (p, _) in enumerate(pieces)}
    merges = []
    for i, (piece, score) in enumerate(pieces):
        if i in _SPECIALS:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                merges.append((-score, i, ids[left], ids[right], left, right))
    return [(m[4], m[5]) for m in sorted(merges)]


def build_tokenizer(pieces: list[tuple[str, float]], model_max_length: int = 512):
    """A fast BPE tokenizer equal to sentencepiece/llama2.c encoding: always a '▁' dummy prefix, byte
    fallback, BOS prepended; pad = unk. A plain `PreTrainedTokenizerFast`, because `LlamaTokenizer`
    rebuilds its pipeline on load with a Metaspace that skips the prefix before a leading space."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {p: i for i, (p, _) in enumerate(pieces)}
    if len(vocab) != len(pieces):
        raise SpearError("tokenizer: duplicate pieces in the vocabulary; the tok*.bin file is corrupt.")
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=bpe_merges(pieces), unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    )
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens([AddedToken(_SPECIALS[i], special=True, normalized=False) for i in sorted(_SPECIALS)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<unk>",
        model_max_length=model_max_length,
    )


def convert_llama2c(bin_path: Path | str, tokenizer_path: Path | str, out_dir: Path | str) -> Path:
    """Write an HF Llama folder (config, model.safetensors, tokenizer) for a llama2.c v0 checkpoint.

    The folder appears atomically (written to a temporary sibling, then renamed); an existing
    `out_dir` is an error.
    """
    from transformers import GenerationConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise SpearError(f"{out_dir}: already exists; remove it or choose another output folder.")
    check_not_input(out_dir, [bin_path, tokenizer_path])
    header, tensors = read_llama2c(Path(bin_path))
    tokenizer = build_tokenizer(read_tokenizer(Path(tokenizer_path), header.vocab_size), header.seq_len)
    model = LlamaForCausalLM(hf_config(header))
    model.load_state_dict(to_hf_state_dict(header, tensors), strict=True)
    model.tie_weights()
    # llama2.c delimits stories with BOS only, so generation also stops at a new BOS (as run.c does).
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=[2, 1], pad_token_id=0)
    with AtomicDir(out_dir, [bin_path, tokenizer_path]) as staging:  # lock, temp folder, commit
        model.save_pretrained(staging.tmp)
        tokenizer.save_pretrained(staging.tmp)
        staging.commit()
    return out_dir


def reference_logits(header: Llama2cHeader, t: dict[str, torch.Tensor], tokens: list[int]) -> torch.Tensor:
    """llama2.c's forward pass (interleaved-pair RoPE from the stored tables, GQA), in float64.

    An independent check of the conversion: returns [len(tokens), vocab] logits.
    """
    w = {k: v.double() for k, v in t.items()}
    n, hd, rep = len(tokens), header.head_dim, header.n_heads // header.n_kv_heads
    cos, sin = w["freq_cos"][:n, None, :], w["freq_sin"][:n, None, :]

    def rmsnorm(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + NORM_EPS) * g

    def rope(x: torch.Tensor) -> torch.Tensor:  # x: [n, heads, hd]; rotate pairs (2i, 2i+1)
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)

    x = w["tok_embeddings"][tokens]
    mask = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)
    for i in range(header.n_layers):
        h = rmsnorm(x, w["attention_norm"][i])
        q = rope((h @ w["wq"][i].T).view(n, header.n_heads, hd))
        k = rope((h @ w["wk"][i].T).view(n, header.n_kv_heads, hd)).repeat_interleave(rep, dim=1)
        v = (h @ w["wv"][i].T).view(n, header.n_kv_heads, hd).repeat_interleave(rep, dim=1)
        att = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd) + mask
        out = torch.einsum("hqk,khd->qhd", att.softmax(-1), v).reshape(n, header.dim)
        x = x + out @ w["wo"][i].T
        h = rmsnorm(x, w["ffn_norm"][i])
        x = x + (torch.nn.functional.silu(h @ w["w1"][i].T) * (h @ w["w3"][i].T)) @ w["w2"][i].T
    head = w["tok_embeddings"] if header.shared_classifier else w["output"]
    return rmsnorm(x, w["norm"]) @ head.T

"""The general probe that needs no data: texts sampled once from the base model, cached beside it. Perplexity on
them measures how far a model drifted from the base distribution."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spear_mm.io.files import atomic_write_text

SAMPLE_SEED = 0


def base_sample_path(base: Path, n: int, tokens: int, seed: int = SAMPLE_SEED) -> Path:
    """Where the base model's samples are cached: next to the base model folder."""
    return base.parent / f"{base.name}.samples-s{seed}-{n}x{tokens}.jsonl"


def sample_base_text(
    base: str | Path,
    n: int = 8,
    tokens: int = 160,
    threads: int | None = None,
    out: Path | None = None,
    seed: int = SAMPLE_SEED,
) -> Path:
    """Sample `n` texts of `tokens` tokens from the base once (`seed`, temperature 1, top-p 0.95, starting from
    the document-separator token: no prompt, no data) and cache them as JSON lines next to the base. Perplexity
    on them measures drift away from the base distribution without any general-domain data."""
    base = Path(base)
    out = out or base_sample_path(base, n, tokens, seed)
    if out.is_file():
        return out
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        tok = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        start = next(t for t in (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, 0) if t is not None)
        ids = torch.full((n, 1), int(start), dtype=torch.long)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        torch.manual_seed(seed)
        with torch.no_grad():
            gen = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=0.95,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                pad_token_id=pad,
            )
    finally:
        torch.set_num_threads(old)
    texts = [tok.decode(row[1:], skip_special_tokens=True).strip() for row in gen]
    atomic_write_text(
        out, "".join(json.dumps({"id": f"sample-{i}", "text": t}) + "\n" for i, t in enumerate(texts) if t)
    )
    return out

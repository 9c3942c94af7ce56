"""Greedy generation for the built-in back end, with the few-shot prefix computed once.

All GSM8K prompts start with the same exemplars (~80% of their tokens). That common prefix runs once;
each batch continues from a copy of its KV cache, with the per-item suffixes left-padded *after* the
prefix (positions follow the attention mask, so the model sees exactly the unpadded prompt).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from transformers import GenerationConfig

log = logging.getLogger(__name__)
Advance = Callable[[int], None]  # called with the number of items just finished


class SupportsGeneration(Protocol):
    """What `generate` needs of a scorer: the built-in back end's `BuiltinScorer` (spear_mm.evaluation.builtin)."""

    model: Any
    tokenizer: Any
    device: torch.device
    batch_size: int
    max_length: int
    pad_id: int
    forward_tokens: int
    mc_strategy: str

    _cache_arg: str | None  # the model's keyword for a KV cache, if it takes one

    def encode(self, texts: Sequence[str]) -> list[list[int]]: ...


MIN_SHARED_PREFIX = 32  # tokens: below this, sharing is not worth a cache copy per batch


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by all sequences."""
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs)
    for k in range(n):
        if any(s[k] != first[k] for s in seqs):
            return k
    return n


def _prefix_cache(engine: SupportsGeneration, prefix: list[int]) -> Any | None:
    if engine.mc_strategy != "shared" or len(prefix) < MIN_SHARED_PREFIX:
        return None
    ids = torch.tensor([prefix], device=engine.device)
    with torch.inference_mode():
        out = engine.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1)
    engine.forward_tokens += len(prefix)
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


@torch.inference_mode()
def generate(
    engine: SupportsGeneration, prompts: Sequence[str], max_gen_toks: int, stop: Sequence[str], advance: Advance
) -> tuple[list[str], int]:
    """Greedy continuations (batched, length-sorted) cut at the first stop string; returns them and the
    number of generated tokens."""
    if max_gen_toks > engine.max_length // 2:
        log.warning("max_gen_toks %d capped to %d (half the context)", max_gen_toks, engine.max_length // 2)
        max_gen_toks = engine.max_length // 2
    budget = engine.max_length - max_gen_toks
    enc = [e[-budget:] for e in engine.encode(prompts)]
    n_prefix = min(common_prefix(enc), min(map(len, enc), default=1) - 1)  # every row keeps >= 1 own token
    cache = _prefix_cache(engine, enc[0][:n_prefix]) if n_prefix > 0 else None
    if cache is None:
        n_prefix = 0
    config = GenerationConfig(
        max_new_tokens=max_gen_toks,
        do_sample=False,
        pad_token_id=engine.pad_id,
        eos_token_id=engine.tokenizer.eos_token_id,
        stop_strings=list(stop) or None,
    )
    outputs, generated = [""] * len(prompts), 0
    order = sorted(range(len(enc)), key=lambda i: -len(enc[i]))
    for start in range(0, len(order), engine.batch_size):
        batch = order[start : start + engine.batch_size]
        new_tokens = _generate_batch(engine, [enc[i] for i in batch], n_prefix, cache, config)
        for i, new in zip(batch, new_tokens, strict=True):
            generated += len(new)
            text = engine.tokenizer.decode(new, skip_special_tokens=True)
            outputs[i] = truncate_at_stop(text, stop)
        advance(len(batch))
    engine.forward_tokens += generated
    return outputs, generated


def _generate_batch(
    engine: SupportsGeneration, rows: list[list[int]], n_prefix: int, cache: Any | None, config: GenerationConfig
) -> list[list[int]]:
    """[prefix | left padding | suffix] rows; the prefix comes from a copy of `cache` when there is one."""
    width = max(len(r) for r in rows) - n_prefix
    ids = torch.full((len(rows), n_prefix + width), engine.pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for k, row in enumerate(rows):
        suffix = row[n_prefix:]
        ids[k, :n_prefix] = torch.tensor(row[:n_prefix], dtype=torch.long)
        mask[k, :n_prefix] = 1
        ids[k, ids.shape[1] - len(suffix) :] = torch.tensor(suffix, dtype=torch.long)
        mask[k, ids.shape[1] - len(suffix) :] = 1
    kwargs: dict[str, Any] = {}
    if cache is not None:
        batch_cache = copy.deepcopy(cache)
        batch_cache.batch_repeat_interleave(len(rows))
        kwargs[engine._cache_arg] = batch_cache
    engine.forward_tokens += int(mask[:, n_prefix:].sum())
    seqs = engine.model.generate(
        input_ids=ids.to(engine.device),
        attention_mask=mask.to(engine.device),
        generation_config=config,
        tokenizer=engine.tokenizer,
        **kwargs,
    )
    out = []
    eos = engine.tokenizer.eos_token_id
    for k in range(len(rows)):
        new = seqs[k, ids.shape[1] :].tolist()
        if eos is not None and eos in new:
            new = new[: new.index(eos)]
        while new and new[-1] == engine.pad_id:
            new.pop()
        out.append(new)
    return out


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cut `text` at the earliest occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]

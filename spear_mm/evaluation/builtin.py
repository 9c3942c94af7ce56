"""The built-in back end: batched loglikelihood, rolling perplexity and greedy generation on a HF causal LM.

Token conventions follow lm-evaluation-harness (context and `context + continuation` encoded with the
tokenizer's defaults, continuation = the tail of the whole encoding), so scores agree with its HF back end.
Speed comes from three things: logits only at scored positions (`logits_to_keep` mask), a multiple-choice
context run once and shared by its choices through the KV cache, and length-sorted, right-padded batches.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from spear_mm.evaluation import generation
from spear_mm.evaluation.generation import Advance

log = logging.getLogger(__name__)


def _noop(_: int) -> None:
    return None


def model_max_length(model: PreTrainedModel, cap: int = 2048) -> int:
    """The model's context length from its config (capped), as lm-eval resolves it."""
    for attr in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(model.config, attr, None)
        if isinstance(value, int) and value > 0:
            return min(value, cap)
    return cap


def rolling_windows(tokens: Sequence[int], prefix: int, window: int, stride: int) -> list[tuple[list[int], int]]:
    """Windows `(seq, n_scored)` predicting every token once: the model reads `seq[:-1]`, the last `n_scored`
    predictions are scored. The first window starts from `prefix`; with stride == window this is lm-eval's
    rolling loglikelihood, a smaller stride gives each window `window - stride` tokens of extra context."""
    if not 0 < stride <= window:
        raise ValueError(f"need 0 < stride <= window, got stride={stride}, window={window}")
    seq = [prefix, *tokens]
    out: list[tuple[list[int], int]] = []
    p, n = 1, len(tokens)
    while p <= n:
        q = min(p + (window if p == 1 else stride), n + 1)
        lo = max(0, q - 1 - window)
        out.append((seq[lo:q], q - p))
        p = q
    return out


def _group_sums(logp: torch.Tensor, targets: Sequence[int], lengths: Sequence[int]) -> list[float]:
    """Log-probabilities of `targets` (one per row of `logp`, in order), summed over consecutive groups of
    `lengths` rows — the log-likelihood of each continuation or window (summed in float64, as Python floats)."""
    picked = logp.gather(1, torch.tensor(targets, device=logp.device)[:, None])[:, 0].tolist()
    out, pos = [], 0
    for n in lengths:
        out.append(sum(picked[pos : pos + n]))
        pos += n
    return out


def _pad_right(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def length_batches(
    keys: Sequence[Any], lengths: Sequence[int], max_rows: int, max_tokens: int, overhead: int
) -> list[list[Any]]:
    """Split `keys` (sorted by decreasing length) into right-padded batches of at most `max_rows` rows and
    `max_tokens` padded tokens, minimising padded tokens + `overhead` per batch (the fixed cost of a forward
    call, in tokens): exact dynamic programme over the split points. Padding is pure waste; on CPU a call is
    cheap (overhead ~16 tokens), on GPU it is not (a few hundred)."""
    n = len(keys)
    best = [0.0] + [float("inf")] * n  # best[i]: cost of the first i rows
    cut = [0] * (n + 1)
    for i in range(1, n + 1):
        for j in range(max(0, i - max_rows), i):  # rows j..i-1 in one batch, width = lengths[j]
            width = max(lengths[j], 1)
            if (i - j) * width > max_tokens and i - j > 1:
                continue
            cost = best[j] + overhead + (i - j) * width
            if cost < best[i]:
                best[i], cut[i] = cost, j
    batches, i = [], n
    while i > 0:
        batches.append(list(keys[cut[i] : i]))
        i = cut[i]
    return batches[::-1]


@dataclass
class BuiltinScorer:
    """Scores prepared requests with one model; `forward_tokens` counts the tokens it actually ran."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 16
    max_length: int | None = None
    max_batch_tokens: int = 4096
    batch_overhead: int | None = None  # fixed cost of a forward call in tokens (batching); None: by device
    mc_strategy: str = "auto"  # "shared" (context once, via KV cache), "flat" (lm-eval style), "auto"
    forward_tokens: int = 0

    def __post_init__(self) -> None:
        self.max_length = self.max_length or model_max_length(self.model)
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        params = inspect.signature(self.model.forward).parameters
        self._keep_mask = "logits_to_keep" in params and self._probe_keep_mask()
        # transformers 5.x renames `past_key_values` to `cache` (the old name is deprecated until 5.40)
        self._cache_arg = next((a for a in ("cache", "past_key_values") if a in params), None)
        if self.mc_strategy == "auto":
            self.mc_strategy = "shared" if "position_ids" in params and self._cache_arg else "flat"

    # ---- low level -------------------------------------------------------------------------------------
    def _probe_keep_mask(self) -> bool:
        """Does this model accept a boolean (batch, seq) `logits_to_keep` (transformers >= 5)?"""
        ids = torch.tensor([[self.pad_id, self.pad_id]], device=self.device)
        keep = torch.tensor([[False, True]], device=self.device)
        try:
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=keep).logits
        except Exception:  # noqa: BLE001 - an older model signature: fall back to full logits
            return False
        return logits.ndim == 2 and logits.shape[0] == 1

    def _batches(self, keys: list[Any], lengths: list[int], rows: int | None = None) -> list[list[Any]]:
        overhead = self.batch_overhead or (16 if self.device.type == "cpu" else 512)
        return length_batches(keys, lengths, rows or self.batch_size, self.max_batch_tokens, overhead)

    def _logits(
        self, ids: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor, **kwargs
    ) -> tuple[torch.Tensor, object]:
        """Log-probabilities at the `keep` positions (row-major, flattened) and the model output."""
        ids, mask, keep = ids.to(self.device), mask.to(self.device), keep.to(self.device)
        self.forward_tokens += int(mask[:, -ids.shape[1] :].sum())
        if self._keep_mask:
            out = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=keep, **kwargs)
            logits = out.logits.reshape(-1, out.logits.shape[-1])
        else:
            out = self.model(input_ids=ids, attention_mask=mask, **kwargs)
            logits = out.logits[keep]
        return F.log_softmax(logits.float(), dim=-1), out

    def encode(self, texts: Sequence[str], special: bool | None = None) -> list[list[int]]:
        """Token ids with the tokenizer's default special tokens (as lm-eval does), or forced on/off."""
        kwargs = {} if special is None else {"add_special_tokens": special}
        return [list(x) for x in self.tokenizer(list(texts), **kwargs)["input_ids"]] if texts else []

    # ---- multiple choice -----------------------------------------------------------------------------
    def encode_pairs(self, contexts: Sequence[str], choices: Sequence[Sequence[str]], delimiter: str = " "):
        """lm-eval's `_encode_pair`: trailing context spaces move to the continuation; the continuation is
        the tail of the whole encoding after the context's own encoding."""
        ctx_txt, whole_txt, owner = [], [], []
        for i, (ctx, chs) in enumerate(zip(contexts, choices, strict=True)):
            n_sp = len(ctx) - len(ctx.rstrip())
            base, lead = (ctx[:-n_sp], ctx[-n_sp:]) if n_sp else (ctx, "")
            ctx_txt.append(base)
            for ch in chs:
                whole_txt.append(base + lead + delimiter + ch)
                owner.append(i)
        ctx_enc = self.encode(ctx_txt)
        whole_enc = self.encode(whole_txt)
        conts: list[list[list[int]]] = [[] for _ in contexts]
        for i, whole in zip(owner, whole_enc, strict=True):
            conts[i].append(whole[len(ctx_enc[i]) :])
        return ctx_enc, conts

    def loglikelihoods(
        self, ctx_enc: list[list[int]], conts: list[list[list[int]]], advance: Advance = _noop
    ) -> list[list[float]]:
        """Sum of log p(continuation | context) for every choice of every item."""
        out: list[list[float]] = [[] for _ in ctx_enc]
        size = [len(c) + max(map(len, cs)) for c, cs in zip(ctx_enc, conts, strict=True)]
        order = sorted(range(len(ctx_enc)), key=lambda i: -size[i])
        shared = self.mc_strategy == "shared"
        for batch in self._batches(order, [size[i] for i in order]):
            if shared:
                try:
                    results = self._mc_shared([ctx_enc[i] for i in batch], [conts[i] for i in batch])
                except (AttributeError, NotImplementedError, TypeError) as exc:
                    log.warning("shared-context scoring unsupported by this model (%s); using flat batches", exc)
                    self.mc_strategy, shared = "flat", False
            if not shared:
                results = self._mc_flat([ctx_enc[i] for i in batch], [conts[i] for i in batch])
            for i, lls in zip(batch, results, strict=True):
                out[i] = lls
            advance(len(batch))
        return out

    def _truncate(self, ctx: list[int], conts: list[list[int]]) -> list[int]:
        budget = self.max_length - (max(len(c) for c in conts) - 1)
        return ctx[-max(budget, 1) :]

    @torch.inference_mode()
    def _mc_shared(self, ctxs: list[list[int]], conts: list[list[list[int]]]) -> list[list[float]]:
        """Run each context once, then all its choices on a copy of its KV cache, in two batched forwards."""
        ctxs = [self._truncate(c, cs) for c, cs in zip(ctxs, conts, strict=True)]
        ids, mask = _pad_right(ctxs, self.pad_id)
        lengths = mask.sum(1)
        last = torch.zeros_like(mask, dtype=torch.bool)
        last[torch.arange(len(ctxs)), lengths - 1] = True
        logp0, out = self._logits(ids, mask, last, use_cache=True)  # (B, V): next-token after each context
        lls = [[float(logp0[i, c[0]]) for c in cs] for i, cs in enumerate(conts)]
        rows = [(i, j) for i, cs in enumerate(conts) for j, c in enumerate(cs) if len(c) > 1]
        rows.sort(key=lambda r: -len(conts[r[0]][r[1]]))  # length-sorted chunks: little padding
        cache = getattr(out, "cache", None)
        cache = cache if cache is not None else getattr(out, "past_key_values", None)
        if rows and cache is None:
            raise NotImplementedError("the model returned no KV cache")
        chunks = self._batches(rows, [len(conts[i][j]) - 1 for i, j in rows])
        for k, chunk in enumerate(chunks):
            sub = cache if k == len(chunks) - 1 else copy.deepcopy(cache)  # batch_select_indices works in place
            for (i, j), ll in zip(chunk, self._choices_on_cache(sub, mask, lengths, chunk, conts), strict=True):
                lls[i][j] += ll
        return lls

    def _choices_on_cache(
        self, cache: Any, mask: torch.Tensor, lengths: torch.Tensor, rows: list[tuple[int, int]], conts: list
    ) -> list[float]:
        """log p(choice tokens after the first | context, earlier choice tokens) for (item, choice) rows."""
        owner = torch.tensor([i for i, _ in rows])
        cache.batch_select_indices(owner.to(self.device))
        c_ids, c_mask = _pad_right([conts[i][j][:-1] for i, j in rows], self.pad_id)
        positions = lengths[owner][:, None] + torch.arange(c_ids.shape[1])[None, :]
        full_mask = torch.cat([mask[owner], c_mask], dim=1)
        kwargs = {self._cache_arg: cache, "position_ids": positions.to(self.device), "use_cache": True}
        logp, _ = self._logits(c_ids, full_mask, c_mask.bool(), **kwargs)
        targets = [tok for i, j in rows for tok in conts[i][j][1:]]
        return _group_sums(logp, targets, [len(conts[i][j]) - 1 for i, j in rows])

    @torch.inference_mode()
    def _mc_flat(self, ctxs: list[list[int]], conts: list[list[list[int]]]) -> list[list[float]]:
        """One row per (context, choice), as lm-eval does; used when a model cannot share its cache."""
        rows = [(i, j) for i, cs in enumerate(conts) for j in range(len(cs))]
        rows.sort(key=lambda r: -(len(ctxs[r[0]]) + len(conts[r[0]][r[1]])))
        seqs = [(ctxs[i] + conts[i][j])[-(self.max_length + 1) :][:-1] for i, j in rows]
        lls = [[0.0] * len(cs) for cs in conts]
        for part in self._batches(list(range(len(rows))), [len(x) for x in seqs], rows=self.batch_size * 4):
            ids, mask = _pad_right([seqs[r] for r in part], self.pad_id)
            keep = torch.zeros_like(mask, dtype=torch.bool)
            targets = []
            for k, r in enumerate(part):
                i, j = rows[r]
                n, length = len(conts[i][j]), len(seqs[r])
                keep[k, length - n : length] = True
                targets.extend(conts[i][j])
            logp, _ = self._logits(ids, mask, keep)
            sums = _group_sums(logp, targets, [len(conts[rows[r][0]][rows[r][1]]) for r in part])
            for r, value in zip(part, sums, strict=True):
                lls[rows[r][0]][rows[r][1]] = value
        return lls

    # ---- perplexity ----------------------------------------------------------------------------------
    def prefix_id(self) -> int:
        tok = self.tokenizer
        for value in (tok.bos_token_id, tok.eos_token_id):
            if value is not None:
                return int(value)
        return self.pad_id

    @torch.inference_mode()
    def rolling_nll(
        self, token_lists: list[list[int]], window: int, stride: int, advance: Advance = _noop
    ) -> list[float]:
        """Total negative log-likelihood of every token of every document (each predicted exactly once)."""
        window = min(window, self.max_length)
        stride = min(stride, window)
        wins = [
            (doc, seq, n)
            for doc, toks in enumerate(token_lists)
            for seq, n in rolling_windows(toks, self.prefix_id(), window, stride)
        ]
        left = [0] * len(token_lists)
        for doc, _, _ in wins:
            left[doc] += 1
        nll = [0.0] * len(token_lists)
        order = sorted(range(len(wins)), key=lambda w: -len(wins[w][1]))
        for batch in self._batches(order, [len(wins[w][1]) - 1 for w in order]):
            ids, mask = _pad_right([wins[w][1][:-1] for w in batch], self.pad_id)
            keep = torch.zeros_like(mask, dtype=torch.bool)
            targets: list[int] = []
            for k, w in enumerate(batch):
                _, seq, n = wins[w]
                keep[k, len(seq) - 1 - n : len(seq) - 1] = True
                targets.extend(seq[-n:])
            logp, _ = self._logits(ids, mask, keep)
            done = 0
            for w, value in zip(batch, _group_sums(logp, targets, [wins[w][2] for w in batch]), strict=True):
                doc = wins[w][0]
                nll[doc] -= value
                left[doc] -= 1
                done += left[doc] == 0
            advance(done)
        return nll

    # ---- generation ----------------------------------------------------------------------------------
    def generate(
        self, prompts: Sequence[str], max_gen_toks: int, stop: Sequence[str], advance: Advance = _noop
    ) -> tuple[list[str], int]:
        """Greedy continuations cut at the first stop string, and the number of generated tokens."""
        return generation.generate(self, prompts, max_gen_toks, stop, advance)

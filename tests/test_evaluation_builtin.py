"""The built-in back end against hand computations on pico models built in code."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from common import make_tiny_model, make_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from spear_mm.evaluation import LoadedTask, MCItem, TaskSpec, TextItem, evaluate
from spear_mm.evaluation.builtin import BuiltinScorer, length_batches, rolling_windows
from spear_mm.evaluation.generation import common_prefix, truncate_at_stop

TEXT = "The quick brown fox jumps over the lazy dog. Revenue rose 12 percent to 4.2 billion dollars."


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return make_tiny_model("llama", vocab_size=len(tok))


def _mc_task(items: list[MCItem], name: str = "mc") -> LoadedTask:
    spec = TaskSpec(name=name, kind="multiple_choice", loader="jsonl_mc")
    return LoadedTask(spec=spec, items=tuple(items), total=len(items))


def _hand_nll(model, ids: list[int]) -> float:
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(x).logits[0, :-1]
    return F.cross_entropy(logits, x[0, 1:], reduction="sum").item()


def test_perplexity_equals_hand_computed_cross_entropy(model, tok):
    spec = TaskSpec(name="ppl", kind="perplexity", loader="text")
    task = LoadedTask(spec=spec, items=(TextItem("a", TEXT), TextItem("b", TEXT[:40])), total=2)
    result = evaluate(model, [task], tok, batch_size=2).tasks["ppl"]
    docs = [tok(t, add_special_tokens=False)["input_ids"] for t in (TEXT, TEXT[:40])]
    prefix = tok.bos_token_id
    nll = [_hand_nll(model, [prefix, *d]) for d in docs]
    n_tok = sum(map(len, docs))
    assert [it.tokens for it in result.items] == [len(d) for d in docs]  # every token predicted exactly once
    assert result.metrics["nll_per_token"] == pytest.approx(sum(nll) / n_tok, rel=1e-5)
    assert result.metrics["ppl"] == pytest.approx(torch.tensor(sum(nll) / n_tok).exp().item(), rel=1e-5)
    assert result.score == pytest.approx(1 / result.metrics["ppl"], rel=1e-9)  # inv_ppl is the score
    assert result.stderr is not None and result.stderr > 0


def test_rolling_windows_with_stride_match_hand_windows(model, tok):
    engine = BuiltinScorer(model, tok)
    doc = tok(TEXT, add_special_tokens=False)["input_ids"]
    window, stride = 12, 5
    (got,) = engine.rolling_nll([doc], window, stride)
    seq = [engine.prefix_id(), *doc]
    want, p = 0.0, 1
    while p <= len(doc):  # predict seq[p:q] from at most `window` tokens of context
        q = min(p + (window if p == 1 else stride), len(doc) + 1)
        lo = max(0, q - 1 - window)
        with torch.no_grad():
            logits = model(torch.tensor([seq[lo : q - 1]])).logits[0]
        logp = logits.log_softmax(-1)
        want -= sum(logp[t - 1 - lo, seq[t]].item() for t in range(p, q))
        p = q
    assert got == pytest.approx(want, rel=1e-5)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 60), window=st.integers(1, 16), stride_frac=st.floats(0.05, 1.0))
def test_rolling_windows_score_each_token_once(n, window, stride_frac):
    stride = max(1, int(window * stride_frac))
    tokens = list(range(100, 100 + n))
    wins = rolling_windows(tokens, prefix=7, window=window, stride=stride)
    scored = [t for seq, k in wins for t in seq[len(seq) - k :]]
    assert scored == tokens
    assert all(len(seq) - 1 <= window for seq, _ in wins)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 300), max_size=40), rows=st.integers(1, 16), overhead=st.integers(0, 64))
def test_length_batches_keep_order_and_limits(lengths, rows, overhead):
    lengths = sorted(lengths, reverse=True)
    batches = length_batches(list(range(len(lengths))), lengths, rows, 512, overhead)
    assert [k for b in batches for k in b] == list(range(len(lengths)))
    assert all(len(b) <= rows and (len(b) == 1 or len(b) * lengths[b[0]] <= 512) for b in batches)
    if lengths and overhead == 0:  # free calls: no padding at all
        assert all(lengths[b[0]] == lengths[b[-1]] for b in batches)


def test_mc_accuracy_follows_the_models_logits(model, tok):
    """Gold = the choice the model itself scores highest (by a direct forward): acc must be 1, argmin gives 0."""
    contexts = ["Question: What is two plus two?\nAnswer:", "The central bank held", "Net income and"]
    choices = [("four", "five", "net income"), ("its policy rate", "the dog", "water"), ("margins", "fox", "0")]
    best, worst = [], []
    for ctx, chs in zip(contexts, choices, strict=True):
        ctx_ids = tok(ctx)["input_ids"]
        lls = []
        for ch in chs:
            whole = tok(ctx + " " + ch)["input_ids"]
            with torch.no_grad():
                logp = model(torch.tensor([whole])).logits[0, :-1].log_softmax(-1)
            lls.append(sum(logp[i - 1, whole[i]].item() for i in range(len(ctx_ids), len(whole))))
        best.append(max(range(len(chs)), key=lls.__getitem__))
        worst.append(min(range(len(chs)), key=lls.__getitem__))
    for labels, expected in ((best, 1.0), (worst, 0.0)):
        items = [
            MCItem(str(i), c, ch, lab) for i, (c, ch, lab) in enumerate(zip(contexts, choices, labels, strict=True))
        ]
        result = evaluate(model, [_mc_task(items)], tok, batch_size=2).tasks["mc"]
        assert result.metrics["acc"] == expected
        assert [it.correct for it in result.items] == [expected == 1.0] * 3


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "qwen2", "gemma3_text"])
def test_shared_context_equals_flat_scoring(tok, model_type):
    m = make_tiny_model(model_type, vocab_size=len(tok))
    contexts = ["Question: what is two plus two?\nAnswer:", "The central bank held", "Revenue rose 12 percent to "]
    choices = [["four", "five", "net income"], ["its rate", "the dog"], ["4.2 billion", "x", "the quick brown fox"]]
    shared, flat = BuiltinScorer(m, tok, batch_size=2), BuiltinScorer(m, tok, batch_size=2, mc_strategy="flat")
    assert shared.mc_strategy == "shared"
    ctx, conts = shared.encode_pairs(contexts, choices)
    a, b = shared.loglikelihoods(ctx, conts), flat.loglikelihoods(ctx, conts)
    assert [x for row in a for x in row] == pytest.approx([x for row in b for x in row], abs=1e-4)
    assert shared.forward_tokens < flat.forward_tokens  # the context ran once per item, not once per choice


def test_continuation_tokens_follow_lm_eval_encode_pair(tok, model):
    engine = BuiltinScorer(model, tok)
    ctx, conts = engine.encode_pairs(["Answer:", "Answer: "], [["four"], ["four"]])
    assert ctx[0] + conts[0][0] == tok("Answer: four")["input_ids"]
    assert ctx[1] == ctx[0]  # a trailing context space moves to the continuation, as in lm-eval
    assert ctx[1] + conts[1][0] == tok("Answer:  four")["input_ids"]


def test_greedy_generation_matches_a_manual_loop(model, tok):
    engine = BuiltinScorer(model, tok, batch_size=2)
    prompts = ["Q: What is two plus two?\nA:", "Revenue rose"]
    outs, n_gen = engine.generate(prompts, max_gen_toks=6, stop=[])
    for prompt, out in zip(prompts, outs, strict=True):
        ids = tok(prompt)["input_ids"]
        for _ in range(6):
            with torch.no_grad():
                nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            ids.append(nxt)
        assert out == tok.decode(ids[len(tok(prompt)["input_ids"]) :], skip_special_tokens=True)
    assert 0 < n_gen <= 12


def test_shared_fewshot_prefix_gives_the_same_generations(model, tok):
    shots = "Q: There are 15 trees. Workers plant more; now 21. How many?\nA: 21 - 15 = 6. The answer is 6.\n\n" * 2
    prompts = [shots + f"Q: What is {i} plus {i}?\nA:" for i in range(5)]
    shared = BuiltinScorer(model, tok, batch_size=2)
    plain = BuiltinScorer(model, tok, batch_size=2, mc_strategy="flat")  # flat: no cache sharing anywhere
    out_shared, n_shared = shared.generate(prompts, max_gen_toks=8, stop=["Q:"])
    out_plain, n_plain = plain.generate(prompts, max_gen_toks=8, stop=["Q:"])
    assert common_prefix([tok(p)["input_ids"] for p in prompts]) > 32
    assert out_shared == out_plain and n_shared == n_plain
    assert shared.forward_tokens < plain.forward_tokens


def test_truncate_at_stop():
    assert truncate_at_stop("x = 3. The answer is 3.\n\nQ: next", ["Q:", "\n\n"]) == "x = 3. The answer is 3."
    assert truncate_at_stop("no stop here", ["Q:"]) == "no stop here"


def test_bf16_model_is_scored_in_float32_and_restored(tok):
    m = make_tiny_model("llama", vocab_size=len(tok)).to(torch.bfloat16)
    m.train()
    items = [MCItem("0", "The central bank held", ("its rate", "the dog"), 0)]
    result = evaluate(m, [_mc_task(items)], tok, threads=1)
    assert result.dtype == "float32"
    assert m.dtype == torch.bfloat16 and m.training  # the caller's model is given back as it was
    assert torch.get_num_threads() == 1


def test_evaluation_is_deterministic(model, tok):
    items = [MCItem(str(i), f"Question {i}: the bank", ("rate", "dog", "fox"), i % 3) for i in range(7)]
    a = evaluate(model, [_mc_task(items)], tok, batch_size=3).tasks["mc"]
    b = evaluate(model, [_mc_task(items)], tok, batch_size=3).tasks["mc"]
    assert [i.lls for i in a.items] == [i.lls for i in b.items]


def test_tokenizer_without_pad_token(model):
    tok = make_tokenizer()
    tok.pad_token = None
    items = [MCItem("0", "The central bank held", ("its rate", "the dog"), 0), MCItem("1", "Net", ("income",) * 2, 1)]
    result = evaluate(model, [_mc_task(items)], tok, batch_size=2).tasks["mc"]
    assert result.n == 2

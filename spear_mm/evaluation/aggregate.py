"""From raw per-item outputs (log-likelihoods, NLL sums, generated text) to a `TaskResult`.

Both back ends feed the same functions, so built-in and lm-eval results are computed identically.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

import numpy as np

from spear_mm.evaluation.metrics import ItemRecord, TaskResult
from spear_mm.evaluation.tasks import GenItem, LoadedTask, MCItem, TextItem


def acc_stderr(p: float, n: int) -> float | None:
    """Standard error of a mean of 0/1 outcomes: sqrt(p(1-p)/(n-1)) (lm-eval's sample stderr)."""
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else None


def _result(task: LoadedTask, metrics: dict[str, float], stderrs: dict[str, float], **kw) -> TaskResult:
    metric = task.spec.primary_metric
    if metric not in metrics:
        raise ValueError(f"task {task.name!r}: metric {metric!r} not computed; available: {sorted(metrics)}")
    return TaskResult(
        task=task.name,
        kind=task.spec.kind,
        group=task.spec.group,
        metric=metric,
        score=metrics[metric],
        stderr=stderrs.get(metric),
        n=len(task.items),
        total=task.total,
        metrics=metrics,
        stderrs=stderrs,
        source=task.source,
        **kw,
    )


def mc_result(task: LoadedTask, lls: Sequence[Sequence[float]], seconds: float, tokens: int, **kw) -> TaskResult:
    """acc (argmax log-likelihood), acc_norm (divided by the choice's character length, lm-eval's code) and
    acc_bytes (divided by its UTF-8 byte length); prediction distribution, and the majority-class baseline when
    every item has the same choices."""
    items: list[MCItem] = list(task.items)  # type: ignore[arg-type]
    records, hits = [], {"acc": [], "acc_norm": [], "acc_bytes": []}
    for item, ll in zip(items, lls, strict=True):
        arr = np.asarray(ll, dtype=float)
        chars = np.array([max(len(c), 1) for c in item.choices], dtype=float)
        nbytes = np.array([max(len(c.encode("utf-8")), 1) for c in item.choices], dtype=float)
        pred = int(np.argmax(arr))
        hits["acc"].append(pred == item.label)
        hits["acc_norm"].append(int(np.argmax(arr / chars)) == item.label)
        hits["acc_bytes"].append(int(np.argmax(arr / nbytes)) == item.label)
        records.append(
            ItemRecord(
                id=item.id,
                correct=pred == item.label,
                pred=item.choices[pred],
                gold=item.choices[item.label],
                lls=[round(float(x), 5) for x in arr],
            )
        )
    n = len(items)
    metrics = {k: sum(v) / n for k, v in hits.items()}
    stderrs = {k: s for k, p in metrics.items() if (s := acc_stderr(p, n)) is not None}
    labels = Counter(r.gold for r in records)
    # The majority class means something only when every item offers the same choices (FPB's 3 labels); with
    # per-item choices (ARC) the "most frequent gold text" is an artefact, so no baseline is given.
    majority = max(labels.values()) / n if len({tuple(i.choices) for i in items}) == 1 else None
    if majority is not None:
        metrics["majority_baseline"] = majority
    return _result(
        task,
        metrics,
        stderrs,
        seconds=seconds,
        tokens=tokens,
        items=records,
        pred_distribution=dict(Counter(r.pred for r in records)),
        label_distribution=dict(labels),
        majority_baseline=majority,
        **kw,
    )


def ppl_result(task: LoadedTask, nll: Sequence[float], n_tokens: Sequence[int], seconds: float, **kw) -> TaskResult:
    """Token-weighted NLL/token, perplexity, inv_ppl = exp(-NLL/token) (the score), bits per byte and word
    perplexity (tokenizer-independent). stderr: ratio-estimator stderr of NLL/token over items (delta method
    for the derived metrics)."""
    items: list[TextItem] = list(task.items)  # type: ignore[arg-type]
    y, x = np.asarray(nll, dtype=float), np.asarray(n_tokens, dtype=float)
    nbytes = np.array([len(i.text.encode("utf-8")) for i in items], dtype=float)
    words = sum(len(re.split(r"\s+", i.text)) for i in items)
    mean = float(y.sum() / x.sum())
    metrics = {
        "nll_per_token": mean,
        "ppl": math.exp(mean),
        "inv_ppl": math.exp(-mean),
        "bits_per_byte": float(y.sum() / nbytes.sum() / math.log(2)),
        "byte_ppl": math.exp(float(y.sum() / nbytes.sum())),
        "word_ppl": math.exp(float(y.sum() / words)),
    }
    stderrs: dict[str, float] = {}
    n = len(items)
    if n > 1:
        se = float(math.sqrt(((y - mean * x) ** 2).sum() / (n - 1) / n) / x.mean())
        stderrs = {"nll_per_token": se, "ppl": metrics["ppl"] * se, "inv_ppl": metrics["inv_ppl"] * se}
    records = [
        ItemRecord(id=i.id, nll=round(float(a), 5), tokens=int(b), bytes=int(c))
        for i, a, b, c in zip(items, y, x, nbytes, strict=True)
    ]
    return _result(task, metrics, stderrs, seconds=seconds, tokens=int(x.sum()), items=records, **kw)


def normalize_answer(text: str | None) -> str | None:
    """Canonical number text: commas, '$' and a trailing '.' removed; '18.00' -> '18'. Non-numbers stripped."""
    if text is None:
        return None
    s = text.strip().replace(",", "").replace("$", "").rstrip(".").strip()
    try:
        d = Decimal(s)
    except InvalidOperation:
        return s.lower()
    if not d.is_finite():
        return s.lower()
    return format(d.normalize(), "f")


def extract_answer(text: str, patterns: Sequence[str]) -> str | None:
    """The last match of the first pattern that matches (first non-empty group, or the whole match)."""
    for pattern in patterns:
        matches = list(re.finditer(pattern, text))
        if matches:
            m = matches[-1]
            groups = [g for g in m.groups() if g] if m.groups() else []
            return (groups[0] if groups else m.group(0)).strip()
    return None


def gen_result(task: LoadedTask, outputs: Sequence[str], seconds: float, tokens: int, **kw) -> TaskResult:
    """exact_match of the extracted, normalised answer against the normalised gold answer."""
    items: list[GenItem] = list(task.items)  # type: ignore[arg-type]
    records = []
    for item, out in zip(items, outputs, strict=True):
        pred = normalize_answer(extract_answer(out, task.spec.answer_regex))
        gold = normalize_answer(item.answer)
        records.append(ItemRecord(id=item.id, correct=pred == gold, pred=pred, gold=gold, output=out[:2000]))
    n = len(items)
    em = sum(bool(r.correct) for r in records) / n
    metrics = {"exact_match": em, "no_answer_rate": sum(r.pred is None for r in records) / n}
    se = acc_stderr(em, n)
    return _result(
        task,
        metrics,
        {"exact_match": se} if se is not None else {},
        seconds=seconds,
        tokens=tokens,
        items=records,
        **kw,
    )

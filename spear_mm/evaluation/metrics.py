"""Evaluation results and the numbers SPEAR-MM decides with: general retention R, domain gain kept K,
the Pareto front over candidates, and paired significance tests between models scored on the same items.

Scores are "higher is better". Perplexity tasks enter as `inv_ppl = exp(-NLL/token) = 1/perplexity`, so
R on such a task is ppl(base)/ppl(model) and K is measured on the same scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from spear_mm.io.files import atomic_write_text

K_EPS = 5e-3  # gain A - B below this share of the scores: the adapted model gained nothing, K is undefined


class ItemRecord(BaseModel):
    """One scored item, kept so that models evaluated on the same items can be compared pairwise."""

    model_config = ConfigDict(extra="ignore")

    id: str
    correct: bool | None = None
    pred: str | None = None
    gold: str | None = None
    lls: list[float] | None = None
    nll: float | None = None
    tokens: int | None = None
    bytes: int | None = None
    output: str | None = None


class TaskResult(BaseModel):
    """Scores of one task: the primary `score` (with `stderr`), every metric, cost, and the items."""

    model_config = ConfigDict(extra="ignore")

    task: str
    kind: str
    group: str = "general"
    metric: str
    score: float
    stderr: float | None = None
    n: int
    total: int | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    stderrs: dict[str, float] = Field(default_factory=dict)
    seconds: float = 0.0
    tokens: int = 0
    forward_tokens: int | None = None
    pred_distribution: dict[str, int] | None = None
    label_distribution: dict[str, int] | None = None
    majority_baseline: float | None = None
    source: str = ""
    items: list[ItemRecord] = Field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


class EvalResult(BaseModel):
    """All task results of one model, with how they were obtained. Saved as JSON (`save`/`load`)."""

    model_config = ConfigDict(extra="ignore")

    model: str
    model_path: str | None = None
    role: Literal["base", "adapted"] | None = None  # `evaluate --base/--adapted`: what `report` reads back
    backend: str = "builtin"
    device: str = "cpu"
    dtype: str = "float32"
    limit: int | None = None
    seed: int = 0
    tokenizer: str = ""
    n_params: int | None = None
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    seconds: float = 0.0
    tasks: dict[str, TaskResult] = Field(default_factory=dict)
    skipped: dict[str, str] = Field(default_factory=dict)

    def score(self, task: str) -> float:
        return self.tasks[task].score

    def task_names(self, group: str | None = None) -> list[str]:
        return [t for t, r in self.tasks.items() if group is None or r.group == group]

    def save(self, path: str | Path) -> Path:
        """Write JSON atomically (a temporary file renamed into place)."""
        return atomic_write_text(path, self.model_dump_json(indent=1))

    @classmethod
    def load(cls, path: str | Path) -> EvalResult:
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))


# ---- retention and gain kept ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tradeoff:
    """R and K of one model against base B and adapted A; per-task values are None where undefined."""

    model: str
    retention: float | None
    gain_kept: float | None
    retention_per_task: dict[str, float | None]
    gain_kept_per_task: dict[str, float | None]


def _shared_tasks(results: Sequence[EvalResult], group: str, tasks: Sequence[str] | None) -> list[str]:
    names = list(tasks) if tasks is not None else results[0].task_names(group)
    return [t for t in names if all(t in r.tasks for r in results)]


def _mean(values: Mapping[str, float | None]) -> float | None:
    defined = [v for v in values.values() if v is not None]
    return sum(defined) / len(defined) if defined else None


def general_retention(
    model: EvalResult, base: EvalResult, tasks: Sequence[str] | None = None, eps: float = 1e-12
) -> tuple[float | None, dict[str, float | None]]:
    """R = score(M)/score(B) per general task (None where the base scores ~0), and their mean."""
    per = {}
    for t in _shared_tasks([base, model], "general", tasks):
        b = base.score(t)
        per[t] = model.score(t) / b if abs(b) > eps else None
    return _mean(per), per


def gain_kept(model: float, base: float, adapted: float, eps: float = K_EPS) -> float | None:
    """K = (M - B) / (A - B); None when the adapted model did not gain, i.e. A - B <= eps · max(|A|, |B|): nothing to
    keep. Relative, so that perplexity scores (1/ppl ≈ 0.02) and accuracies (≈ 0.5) are judged alike."""
    gain = adapted - base
    if not math.isfinite(gain) or gain <= eps * max(abs(adapted), abs(base)):
        return None
    return (model - base) / gain


def domain_gain_kept(
    model: EvalResult,
    base: EvalResult,
    adapted: EvalResult,
    tasks: Sequence[str] | None = None,
    eps: float = K_EPS,
) -> tuple[float | None, dict[str, float | None]]:
    """K per domain task and the mean over tasks where it is defined (None if defined nowhere)."""
    per = {
        t: gain_kept(model.score(t), base.score(t), adapted.score(t), eps)
        for t in _shared_tasks([base, adapted, model], "domain", tasks)
    }
    return _mean(per), per


def tradeoff(
    model: EvalResult, base: EvalResult, adapted: EvalResult, eps: float = K_EPS, exclude: Sequence[str] = ()
) -> Tradeoff:
    """R and K of `model` in one value; `exclude`: tasks left out of both (e.g. those at chance level)."""
    general = [t for t in base.task_names("general") if t not in exclude]
    domain = [t for t in base.task_names("domain") if t not in exclude]
    r, r_per = general_retention(model, base, general)
    k, k_per = domain_gain_kept(model, base, adapted, domain, eps=eps)
    return Tradeoff(model.model, r, k, r_per, k_per)


def pareto_front(points: Mapping[str, tuple[float | None, float | None]]) -> list[str]:
    """Names not dominated in (R, K), both maximised; points with an undefined coordinate are left out."""
    valid = {n: (r, k) for n, (r, k) in points.items() if r is not None and k is not None}
    front = []
    for name, (r, k) in valid.items():
        dominated = any(
            r2 >= r and k2 >= k and (r2 > r or k2 > k) for other, (r2, k2) in valid.items() if other != name
        )
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: (-valid[n][0], -valid[n][1]))


# ---- paired tests -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairedTest:
    """A paired comparison of model a against model b on the same items; diff = a - b."""

    test: str
    n: int
    diff: float
    p_value: float
    ci_low: float | None = None
    ci_high: float | None = None
    a_only: int | None = None  # McNemar: items only a got right
    b_only: int | None = None


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> PairedTest:
    """Exact (binomial) two-sided McNemar test on paired correctness; diff is the accuracy difference."""
    if len(a) != len(b) or not a:
        raise ValueError("mcnemar needs two non-empty sequences of equal length")
    a_only = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    b_only = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    m = a_only + b_only
    if m == 0:
        p = 1.0
    else:
        tail = sum(math.comb(m, i) for i in range(min(a_only, b_only) + 1)) / 2**m
        p = min(1.0, 2 * tail)
    return PairedTest("mcnemar-exact", len(a), (a_only - b_only) / len(a), p, a_only=a_only, b_only=b_only)


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    weights: Sequence[float] | None = None,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> PairedTest:
    """Paired bootstrap of the (weighted) mean difference a - b: 95% interval and a two-sided p-value."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float)
    if x.shape != y.shape or x.shape != w.shape or x.size == 0:
        raise ValueError("paired_bootstrap needs non-empty sequences of equal length")
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_resamples, x.size))
    ws = w[idx]
    diffs = (ws * (x - y)[idx]).sum(1) / ws.sum(1)
    diff = float((w * (x - y)).sum() / w.sum())
    p = float(min(1.0, 2 * min((diffs <= 0).mean(), (diffs >= 0).mean())))
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    return PairedTest("paired-bootstrap", int(x.size), diff, p, float(lo), float(hi))


def compare(a: EvalResult, b: EvalResult, task: str, n_resamples: int = 10_000, seed: int = 0) -> PairedTest:
    """Paired test of two models on the items they share in `task`: McNemar on correctness, or a paired
    bootstrap of NLL/token (token-weighted; diff < 0 means a predicts the text better) for perplexity."""
    ia = {it.id: it for it in a.tasks[task].items}
    ib = {it.id: it for it in b.tasks[task].items}
    shared = [i for i in ia if i in ib]
    if not shared:
        raise ValueError(f"{a.model} and {b.model} share no items of {task!r}; evaluate both with the same seed")
    if a.tasks[task].kind == "perplexity":
        tok = [float(ia[i].tokens or 0) for i in shared]
        xa = [float(ia[i].nll or 0) / max(t, 1) for i, t in zip(shared, tok, strict=True)]
        xb = [float(ib[i].nll or 0) / max(t, 1) for i, t in zip(shared, tok, strict=True)]
        return paired_bootstrap(xa, xb, tok, n_resamples, seed)
    return mcnemar([bool(ia[i].correct) for i in shared], [bool(ib[i].correct) for i in shared])

"""Task types as data: a `TaskSpec` (what to load and how to score it) and the prepared items it yields."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TaskKind = Literal["multiple_choice", "perplexity", "generation"]

# Default primary metric per task kind (the number R and K are computed from; higher is better).
DEFAULT_METRIC: dict[str, str] = {
    "multiple_choice": "acc",
    "perplexity": "inv_ppl",
    "generation": "exact_match",
}

# The GSM8K chain-of-thought stop strings (lm-eval's gsm8k-cot): the next exemplar or a blank line ends it.
DEFAULT_STOP = ("Q:", "Question:", "</s>", "<|im_end|>", "\n\n")
# Answer extraction: the first pattern that matches wins, and its last match is taken.
DEFAULT_ANSWER_REGEX = (r"The answer is (\-?[0-9\.\,]+)", r"#### (\-?[0-9\.\,]+)", r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


class TaskSpec(BaseModel):
    """One task, as plain data (a suite YAML entry). Unknown keys are errors, not silent defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: TaskKind
    loader: str = Field(
        description="loader name: arc, fpb, reuters_topic, reuters_text, gsm8k, wikitext, jsonl_mc, jsonl_gen, text"
    )
    group: Literal["general", "domain"] = Field(
        "general", description="'general' tasks enter R, 'domain' tasks enter K"
    )
    path: str | None = Field(None, description="file: absolute, or relative to the suite's data_dir, else --data-dir")
    metric: str | None = Field(None, description="primary metric; default per kind (acc, inv_ppl, exact_match)")
    source: Literal["local", "hub"] = "local"
    hub: dict[str, Any] | None = Field(None, description="datasets.load_dataset kwargs for source=hub")
    args: dict[str, Any] = Field(default_factory=dict, description="loader-specific options")
    limit: int | None = Field(
        None, ge=1, description="items of this task at most (with --limit too, the smaller of the two)"
    )
    # perplexity
    window: int | None = Field(
        None, description="tokens per forward window; default the model's context length, capped at 2048"
    )
    stride: int | None = Field(None, description="new tokens scored per window; default = window (lm-eval)")
    chunk_chars: int = Field(2000, description="long texts are cut at paragraph ends into items of ~this size")
    # generation
    num_fewshot: int = 8
    fewshot: Literal["fixed", "train"] = "fixed"
    max_gen_toks: int = 256
    stop: tuple[str, ...] = DEFAULT_STOP
    answer_regex: tuple[str, ...] = DEFAULT_ANSWER_REGEX
    description: str = ""

    @property
    def primary_metric(self) -> str:
        return self.metric or DEFAULT_METRIC[self.kind]


@dataclass(frozen=True)
class MCItem:
    """A multiple-choice item: score `context + " " + choice` for each choice; `label` indexes the gold one."""

    id: str
    context: str
    choices: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class TextItem:
    """A document whose every token is scored (perplexity)."""

    id: str
    text: str


@dataclass(frozen=True)
class GenItem:
    """A generation item: greedy continuation of `prompt`, compared with `answer` after extraction."""

    id: str
    prompt: str
    answer: str


Item = MCItem | TextItem | GenItem


@dataclass(frozen=True)
class LoadedTask:
    """A spec with its items, ready for any back end. `total` is the item count before `--limit`."""

    spec: TaskSpec
    items: tuple[Item, ...]
    total: int
    source: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return self.spec.name


def item_label(item: Item) -> str | None:
    """The stratification label of an item: the gold choice for multiple choice, none otherwise."""
    if isinstance(item, MCItem):
        return item.choices[item.label]
    return None


def select_items(items: Sequence[Item], limit: int | None, seed: int = 0) -> list[Item]:
    """Sample `limit` items with a fixed seed, stratified by label when items have labels.

    Never the first N: some files are sorted by label. Strata get proportional shares (largest remainder,
    at least one per non-empty stratum when the limit allows), and the original order is kept.
    """
    if limit is None or limit >= len(items):
        return list(items)
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    rng = random.Random(seed)
    strata: dict[str | None, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        strata[item_label(item)].append(i)
    quotas = _proportional_quotas({k: len(v) for k, v in strata.items()}, limit)
    chosen: list[int] = []
    for key in sorted(strata, key=lambda k: "" if k is None else k):
        chosen.extend(rng.sample(strata[key], quotas[key]))
    return [items[i] for i in sorted(chosen)]


def _proportional_quotas(sizes: dict[Any, int], limit: int) -> dict[Any, int]:
    """Split `limit` over strata in proportion to their sizes (largest-remainder method)."""
    total = sum(sizes.values())
    exact = {k: limit * n / total for k, n in sizes.items()}
    quotas = {k: min(sizes[k], int(v)) for k, v in exact.items()}
    if limit >= len(sizes):  # every label present at least once
        for k in quotas:
            quotas[k] = max(quotas[k], 1)
    order = sorted(sizes, key=lambda k: (-(exact[k] - int(exact[k])), str(k)))
    while sum(quotas.values()) < limit:
        for k in order:
            if sum(quotas.values()) >= limit:
                break
            if quotas[k] < sizes[k]:
                quotas[k] += 1
    while sum(quotas.values()) > limit:  # the at-least-one rule can overshoot: trim the largest
        k = max(quotas, key=lambda k: (quotas[k], str(k)))
        quotas[k] -= 1
    return quotas

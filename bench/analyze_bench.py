"""Scoring benchmark: spear-mm analysis vs a Spectrum-style baseline, in the same run, on the synthetic pair.

- spear-mm: `spear_mm.scoring.layers.analyze` (Gram + eigvalsh, auto float32/float64, a thread pool of `--workers`).
- baseline: the same metrics computed Spectrum's way — each matrix loaded in float32 and decomposed with
  `torch.linalg.svdvals`, one tensor after another, torch's default threads.

Each phase runs in its own subprocess (so peak RSS is per phase); the files are read once beforehand so both
phases find them in the page cache. Checks: identical layer ranking, SNR agreement (relative) per matrix.

    .venv/bin/python bench/analyze_bench.py --scale 1.0          # TinyLlama-shape 1.1B, minutes on 2 cores
    .venv/bin/python bench/analyze_bench.py --scale 0.25         # quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synth_pair import WORK, make_synth_pair  # noqa: E402

SNR_FIELDS = ("snr_base", "snr_adapted", "snr_delta")


def _phase(kind: str, base: Path, adapted: Path, out: Path, workers: int) -> None:
    """Run one phase in this process and write its result JSON (rows, ranking, wall time, peak RSS)."""
    import torch

    from spear_mm.io.pair import open_pair
    from spear_mm.scoring.layers import ScoreConfig, analyze, layer_scores, normalize_rows, score_names

    started = time.perf_counter()
    if kind == "spear":
        table = analyze(base, adapted, out / "scores", workers=workers)
        rows, layers = table.modules, table.layers
        extra = {"precision_counts": table.timing.precision_counts, "torch_threads": table.timing.torch_threads}
    else:
        config = ScoreConfig(method="svd")
        pair = open_pair(base, adapted)
        rows = [r for name in pair.names for r in score_names(base, adapted, [name], config)]
        rows = normalize_rows(rows, config)
        layers = layer_scores(rows, pair.num_layers, config)
        extra = {"torch_threads": torch.get_num_threads()}
    wall = time.perf_counter() - started
    result = {
        "kind": kind,
        "wall_s": wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "ranking": [s.layer for s in sorted(layers, key=lambda s: s.rank)],
        "layer_scores": [s.score for s in layers],
        "snr": {r.name: [getattr(r, f) for f in SNR_FIELDS] for r in rows if r.snr_base is not None},
        "signal": {r.name: [r.signal_base, r.signal_adapted] for r in rows if r.snr_base is not None},
        **extra,
    }
    (out / f"{kind}.json").write_text(json.dumps(result))


def _warm(folder: Path) -> None:
    for f in sorted(folder.glob("*.safetensors")):
        with f.open("rb") as fh:
            while fh.read(64 << 20):
                pass


def _compare(spear: dict, base: dict) -> dict:
    worst, worst_name, flips = 0.0, None, 0
    for name, vals in spear["snr"].items():
        if spear["signal"][name] != base["signal"][name]:
            flips += 1  # a singular value on the edge counted on the other side: a jump, not a rounding error
            continue
        for a, b in zip(vals, base["snr"][name], strict=True):
            if a is None:
                continue
            rel = abs(a - b) / max(abs(b), 1e-12)
            if rel > worst:
                worst, worst_name = rel, name
    return {
        "same_ranking": spear["ranking"] == base["ranking"],
        "snr_max_rel_diff": worst,
        "worst": worst_name,
        "edge_flips": flips,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--phase", choices=["spear", "baseline"], help=argparse.SUPPRESS)
    ap.add_argument("--pair", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = args.out or WORK / f"analyze-bench-{args.scale:g}"
    out.mkdir(parents=True, exist_ok=True)
    if args.phase:
        _phase(args.phase, *args.pair, out, args.workers)
        return
    t0 = time.perf_counter()
    base, adapted = make_synth_pair(scale=args.scale, seed=args.seed)
    print(f"pair: {base.parent} ({time.perf_counter() - t0:.0f} s to make or find)", flush=True)
    for folder in (base, adapted):
        _warm(folder)
    load = os.getloadavg()[0]
    results = {}
    for kind in ("spear", "baseline"):
        cmd = [sys.executable, __file__, "--phase", kind, "--pair", str(base), str(adapted), "--out", str(out)]
        cmd += ["--workers", str(args.workers), "--scale", str(args.scale)]
        print(f"running {kind} …", flush=True)
        subprocess.run(cmd, check=True)
        results[kind] = json.loads((out / f"{kind}.json").read_text())
        print(f"  {kind}: {results[kind]['wall_s']:.1f} s, peak RSS {results[kind]['peak_rss_mb']:.0f} MB", flush=True)
    cmp = _compare(results["spear"], results["baseline"])
    summary = {
        "scale": args.scale,
        "pair": str(base.parent),
        "cpus": os.cpu_count(),
        "load_avg_before": round(load, 2),
        "load_avg_after": round(os.getloadavg()[0], 2),
        "workers": args.workers,
        "spear_s": round(results["spear"]["wall_s"], 1),
        "baseline_s": round(results["baseline"]["wall_s"], 1),
        "speedup": round(results["baseline"]["wall_s"] / results["spear"]["wall_s"], 2),
        "spear_peak_rss_mb": round(results["spear"]["peak_rss_mb"]),
        "baseline_peak_rss_mb": round(results["baseline"]["peak_rss_mb"]),
        "precision_counts": results["spear"].get("precision_counts"),
        "spear_torch_threads": results["spear"].get("torch_threads"),
        "baseline_torch_threads": results["baseline"].get("torch_threads"),
        **cmp,
        "ranking": results["spear"]["ranking"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

"""Every candidate of a run folder against the uniform-SLERP curve on one general and one domain perplexity task
alone: the low-noise view of docs/results.md ("Data-aware restoration", per-axis table).

R = inv_ppl_G(M) / inv_ppl_G(base), K = (inv_ppl_D(M) − base) / (adapted − base), as spear-mm defines them; ΔR at
equal K against the uniform curve of the same two axes (`r_on_curve`: linear between neighbouring t, the best
segment at that K); and a paired bootstrap of per-document NLL/token against the uniform point nearest in K.

    python bench/axis_curve.py RUN --domain demo_finance_ppl --general wikitext2 base_sample_ppl
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

from spear_mm.evaluation.metrics import EvalResult
from spear_mm.evaluation.uniform_curve import CurvePoint, r_on_curve, uniform_t


def inv_ppl(result: EvalResult, task: str) -> float:
    items = result.tasks[task].items
    return math.exp(-sum(i.nll for i in items) / sum(i.tokens for i in items))


def paired(a: EvalResult, b: EvalResult, task: str, n: int = 4000, seed: int = 0) -> tuple[float, float]:
    """NLL/token of a − b over the same documents, and the two-sided paired-bootstrap p."""
    x = [(i.nll, i.tokens) for i in a.tasks[task].items]
    y = [(i.nll, i.tokens) for i in b.tasks[task].items]
    k, rng = len(x), random.Random(seed)

    def diff(idx) -> float:
        return sum(x[i][0] for i in idx) / sum(x[i][1] for i in idx) - sum(y[i][0] for i in idx) / sum(
            y[i][1] for i in idx
        )

    draws = [diff([rng.randrange(k) for _ in range(k)]) for _ in range(n)]
    p = 2 * min(sum(d <= 0 for d in draws), sum(d >= 0 for d in draws)) / n
    return diff(range(k)), min(1.0, p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--domain", required=True, help="the domain perplexity task")
    ap.add_argument("--general", nargs="+", required=True, help="general perplexity tasks, one table each")
    args = ap.parse_args()
    results = {r.model: r for r in (EvalResult.load(f) for f in sorted((args.run / "eval").glob("*.json")))}
    uniform = sorted((m for m in results if uniform_t(m) is not None), key=uniform_t)
    others = sorted(m for m in results if m not in {"base", "adapted", *uniform})
    d = args.domain
    for g in args.general:
        r = {m: inv_ppl(res, g) / inv_ppl(results["base"], g) for m, res in results.items()}
        span = inv_ppl(results["adapted"], d) - inv_ppl(results["base"], d)
        k = {m: (inv_ppl(res, d) - inv_ppl(results["base"], d)) / span for m, res in results.items()}
        curve = [CurvePoint(name=m, t=t, retention=r[m], gain_kept=k[m])
                 for m, t in [("adapted", 0.0), *((u, uniform_t(u)) for u in uniform), ("base", 1.0)]]  # fmt: skip
        print(f"\n### {g} (general) against {d} (domain)")
        print("| model | R | K | uniform R at equal K | ΔR | nearest uniform | Δ general NLL/token, p | Δ domain, p |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for m in others:
            cr = r_on_curve(curve, k[m])
            near = min(uniform, key=lambda u: abs(k[u] - k[m]))
            (dg, pg), (dd, pd) = paired(results[m], results[near], g), paired(results[m], results[near], d)
            dr = "" if cr is None else f"{r[m] - cr:+.3f}"
            print(f"| {m} | {r[m]:.3f} | {k[m]:.3f} | {'' if cr is None else f'{cr:.3f}'} | {dr} | {near} | "
                  f"{dg:+.4f}, p={pg:.3f} | {dd:+.4f}, p={pd:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()

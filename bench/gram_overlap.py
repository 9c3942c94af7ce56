"""Per-layer diagnostics of probe statistics (`spear-mm stats`): how far the general and domain inputs overlap.

RegMean restores a layer along the input directions the general probe uses and keeps it along those the domain
probe uses; where the two Grams share their directions there is nothing to separate, and where the general probe
misses the directions the real general text uses, the restoration misses them too. For each site (the input of
q/k/v, o_proj, gate/up, down_proj) of each layer this prints:

    cos(Gg,Gd)     tr(Gg·Gd) / (‖Gg‖·‖Gd‖): 1 = the same input distribution up to scale, 0 = orthogonal inputs
    erank g / d    effective rank (exp of the entropy of the normalised eigenvalues) of each Gram
    d in top-g     share of the domain Gram's trace inside the span of the general Gram's top-erank eigenvectors

With a second statistics folder (`--other`, e.g. the same pair with another general probe) it also prints
cos(Gg, Gg') and the share of Gg' inside the top-erank span of Gg: whether one general probe covers the other.

    python bench/gram_overlap.py STATS [--other STATS2] [--layers 0,7,15,23,29]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from spear_mm.statistics.store import Statistics, read_meta


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum() / (a.norm() * b.norm()))


def effective_rank(g: torch.Tensor) -> tuple[float, torch.Tensor]:
    """exp(entropy) of the normalised eigenvalues, and the eigenvectors (largest first)."""
    vals, vecs = torch.linalg.eigh(g.double())
    vals, vecs = vals.clamp_min(0).flip(0), vecs.flip(1)
    p = vals / vals.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return math.exp(float(entropy)), vecs


def share_inside(g: torch.Tensor, vecs: torch.Tensor, k: int) -> float:
    """tr(Pₖ G Pₖ) / tr(G) for the projector Pₖ on the first k columns of `vecs`."""
    top = vecs[:, :k]
    return float(torch.trace(top.T @ g.double() @ top) / torch.trace(g.double()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stats", type=Path)
    ap.add_argument("--other", type=Path, help="a second statistics folder: compare the general Grams")
    ap.add_argument("--layers", default="", help="layer indices to print (default: every layer)")
    args = ap.parse_args()
    meta, stats = read_meta(args.stats), Statistics(args.stats)
    other = Statistics(args.other) if args.other else None
    sites = sorted(set(meta.sites.values()), key=lambda s: (int(s.split(".")[2]), s))
    wanted = {int(x) for x in args.layers.split(",") if x.strip()}
    head = "| site | cos(Gg,Gd) | erank g / d / dim | d in top-g |" + (" cos(Gg,Gg') | g' in top-g |" if other else "")
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    totals: dict[str, list[float]] = {}
    for site in sites:
        layer = int(site.split(".")[2])
        weight = site + ".weight"
        gg, gd = stats.gram("general", weight), stats.gram("domain", weight)
        rg, vg = effective_rank(gg)
        rd, _ = effective_rank(gd)
        k = max(1, round(rg))
        row = {"cos": cosine(gg, gd), "d_in_g": share_inside(gd, vg, k)}
        cells = f"{row['cos']:.3f} | {rg:.0f} / {rd:.0f} / {gg.shape[0]} | {row['d_in_g']:.3f} |"
        if other is not None:
            go = other.gram("general", weight)
            row |= {"cos_gg": cosine(gg, go), "o_in_g": share_inside(go, vg, k)}
            cells += f" {row['cos_gg']:.3f} | {row['o_in_g']:.3f} |"
        kind = site.split(".")[-1]
        for name, value in row.items():
            totals.setdefault(f"{kind}/{name}", []).append(value)
        if not wanted or layer in wanted:
            print(f"| {site} | {cells}")
    print("\nmeans over layers:")
    for name, values in sorted(totals.items()):
        print(f"  {name}: {sum(values) / len(values):.3f}")


if __name__ == "__main__":
    main()

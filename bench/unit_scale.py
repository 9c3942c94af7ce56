"""Which score scale for the units outside the blocks (embeddings, head, final norm) predicts what restoring
them does? Compares candidate scales against the ground truth `restore_gain` (general-probe NLL recovered by
restoring one unit at t = 1; `analyze --probe P --ground-truth`) on real or planted pairs.

    python bench/unit_scale.py                          # the planted pico pair and the tiny drift pair (tests/)
    python bench/unit_scale.py --scores RUN/scores ...  # scores.json of any pair analysed with --ground-truth
    python bench/unit_scale.py --pair BASE ADAPTED --probe general.txt   # analyse one pair first (costly)

Candidates (layers keep their score; only the units outside the blocks move), each on two drifts: (rc) the
unit's relative change, (row) the median row drift for embedding/head matrices (the relative change otherwise):
    rc_z             robust z against the layers' relative changes (rc_z(rc): the scale before issue 22)
    log_ratio        median layer score + log2(drift / median layer change) x robust spread of the layer scores
    quantile         the score of the k-th least-scored layer, k = the number of layers that moved less
    like_layers      the mean score of the max(1, L // 10) layers that moved most like it (log scale);
                     like_layers(row) is spear-mm's scale since issue 22
Printed per pair: each unit's joint rank under every candidate and by restore_gain, and Spearman's rho between
score and restore_gain over all units.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from spear_mm.scoring.layers import analyze  # noqa: E402
from spear_mm.scoring.table import ScoreTable  # noqa: E402
from spear_mm.scoring.units import drift_quantile, like_layers_score  # noqa: E402


def _robust_z(x: float, values: list[float]) -> float:
    s = sorted(values)
    med = s[len(s) // 2] if len(s) % 2 else 0.5 * (s[len(s) // 2 - 1] + s[len(s) // 2])
    dev = sorted(abs(v - med) for v in values)
    mad = dev[len(dev) // 2] if len(dev) % 2 else 0.5 * (dev[len(dev) // 2 - 1] + dev[len(dev) // 2])
    scale = 1.4826 * mad or (max(values) - min(values)) / 2 or 1e-12
    return (x - med) / scale


def _at_quantile(q: float, scores: list[float]) -> float:
    s = sorted(scores)
    return s[max(round(q * len(s)), 1) - 1]


def candidates(table: ScoreTable) -> dict[str, dict[str, float]]:
    """{candidate: {unit: score}} for every unit of the table."""
    layers = [u for u in table.units if u.group == "layer"]
    changes, scores = [u.rel_change for u in layers], [u.score for u in layers]
    s_med = sorted(scores)[len(scores) // 2]
    s_spread = 1.4826 * sorted(abs(x - s_med) for x in scores)[len(scores) // 2] or 1.0
    r_med = sorted(changes)[len(changes) // 2]
    rules = {
        "rc_z": lambda d: _robust_z(d, changes),
        "log_ratio": lambda d: s_med + math.log2(max(d, 1e-12) / r_med) * s_spread,
        "quantile": lambda d: _at_quantile(drift_quantile(d, changes), scores),
        "like_layers": lambda d: like_layers_score(d, changes, scores),
    }
    out: dict[str, dict[str, float]] = {}
    for name, rule in rules.items():
        for drift_of in ("rc", "row"):
            col = {u.unit: u.score for u in layers}
            for u in table.units:
                if u.group != "layer":
                    row = drift_of == "row" and u.row_drift_median is not None
                    col[u.unit] = rule(u.row_drift_median if row else u.rel_change)
            out[f"{name}({drift_of})"] = col
    return out


def _ranks(values: dict[str, float], order: list[str]) -> dict[str, int]:
    ranked = sorted(order, key=lambda u: (-values[u], order.index(u)))
    return {u: i + 1 for i, u in enumerate(ranked)}


def report(label: str, table: ScoreTable) -> None:
    order = [u.unit for u in table.units]
    gain = {u.unit: u.restore_gain for u in table.units}
    if any(g is None for g in gain.values()):
        raise SystemExit(f"{label}: no restore_gain in the scores (analyze with --probe FILE --ground-truth)")
    others = [u for u in table.units if u.group != "layer"]
    layer_rc = [u.rel_change for u in table.units if u.group == "layer"]
    print(f"\n== {label}: {table.num_layers} layers, layer rel_change {min(layer_rc):.4f}..{max(layer_rc):.4f}")
    for u in others:
        print(f"   {u.unit}: rel_change {u.rel_change:.4f}, row drift median {u.row_drift_median}, "
              f"restore_gain {u.restore_gain:+.4f}")  # fmt: skip
    by_gain = _ranks(gain, order)
    cols = candidates(table)
    head = ["unit", "restore_gain rank", *[f"{c} (score / rank)" for c in cols]]
    print(" | ".join(head))
    for u in others:
        cells = [f"{cols[c][u.unit]:.2f} / #{_ranks(cols[c], order)[u.unit]}" for c in cols]
        print(" | ".join([u.unit, f"#{by_gain[u.unit]} of {len(order)}", *cells]))
    rho = {c: spearmanr([cols[c][u] for u in order], [gain[u] for u in order])[0] for c in cols}
    print("Spearman rho(score, restore_gain) over all units: " + ", ".join(f"{c} {r:+.3f}" for c, r in rho.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scores", nargs="*", type=Path, default=[], help="scores folders analysed with --ground-truth")
    ap.add_argument("--pair", nargs=2, type=Path, metavar=("BASE", "ADAPTED"), help="analyse this pair first")
    ap.add_argument("--probe", type=Path, help="general probe text for --pair")
    ap.add_argument("--probe-tokens", type=int, default=1024)
    ap.add_argument("--keep", type=Path, help="with --pair: keep the scores folder here (re-read with --scores)")
    args = ap.parse_args()
    if args.pair:
        with tempfile.TemporaryDirectory() as tmp:
            table = analyze(*args.pair, args.keep or Path(tmp) / "scores", probe=args.probe, ground_truth=True,
                            probe_tokens=args.probe_tokens)  # fmt: skip
            report(f"{args.pair[1].name} vs {args.pair[0].name}", table)
    for folder in args.scores:
        report(str(folder), ScoreTable.load(folder))
    if args.pair or args.scores:
        return
    from common import save_pair
    from planted_pair import save_planted_pair

    with tempfile.TemporaryDirectory() as tmp:
        paths = save_planted_pair(Path(tmp) / "planted")
        table = analyze(paths["base"], paths["adapted"], workers=1, probe=paths["general"], ground_truth=True)
        report("planted pair (60% noise in the embeddings: restoring them helps)", table)
        base, adapted = save_pair(Path(tmp) / "tiny", drift_layers={3: 0.5, 5: 0.5})
        table = analyze(base, adapted, workers=1, probe=paths["general"], ground_truth=True)
        report("tiny drift pair (1% noise everywhere, layers 3 and 5 drift)", table)


if __name__ == "__main__":
    main()

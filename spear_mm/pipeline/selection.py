"""Choosing a model from the retention–domain trade-off, and comparing SPEAR-MM plans with the baselines.

Choice rule (documented in docs/pipeline.md):
- with a retention target: among the models with R ≥ target, the one with the most K (ties: higher R);
  when none reaches the target, the one with the highest R (and the run says so);
- without a target: the best balanced point, the maximum of the harmonic mean of clip(R, 0, 1) and
  clip(K, 0, 1) (ties: higher R, then higher K — so the choice is always on the Pareto front). Clipping keeps
  a model that over-shoots one axis (R > 1 happens) from buying a low value on the other; the harmonic mean
  punishes a low value on either axis.
Models with an undefined R or K (e.g. no domain gain to keep) cannot be chosen by either rule.

Noise (`prefer_simpler`): the rule's pick W gives way to the best simpler candidate S (uniform over selective,
less restoration over more; with a met target, S must meet it too) unless W is better than S beyond the
paired-test noise on the tasks that decide R and K: significantly better (p < 0.05) on at least one of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from pydantic import BaseModel

from spear_mm.report.schema import Comparison

Point = tuple[float | None, float | None]  # (R, K)


def balance(r: float, k: float) -> float:
    """Harmonic mean of clip(R, 0, 1) and clip(K, 0, 1)."""
    rc, kc = min(max(r, 0.0), 1.0), min(max(k, 0.0), 1.0)
    return 0.0 if rc + kc == 0 else 2 * rc * kc / (rc + kc)


class Choice(BaseModel):
    chosen: str | None
    rule: str
    met_target: bool | None = None
    reason: str = ""
    first_pick: str | None = None  # the rule's pick, when a simpler candidate not distinguishable from it won
    tests: str = ""  # the paired tests behind the noise check


def _key(p: tuple[float, float], target: float | None, met: bool | None):
    if target is None:
        return (balance(*p), *p)
    return (p[1], p[0]) if met else (p[0], p[1])


def prefer_simpler(
    choice: Choice,
    points: Mapping[str, Point],
    simplicity: Mapping[str, tuple[int, float]],
    beats: Callable[[str, str], tuple[bool, str]],
    target_retention: float | None = None,
) -> Choice:
    """The choice after the noise check: `simplicity[name]` = (0 uniform or plain CPT / 1 selective, amount
    restored); `beats(a, b)` = (a better than b beyond noise, the tests as text)."""
    w = choice.chosen
    if w is None or w not in simplicity:
        return choice
    simpler = {
        n: (r, k)
        for n, (r, k) in points.items()
        if n in simplicity
        and simplicity[n] < simplicity[w]
        and r is not None
        and k is not None
        and (not choice.met_target or target_retention is None or r >= target_retention)
    }
    if not simpler:
        return choice
    s = max(simpler, key=lambda n: (_key(simpler[n], target_retention, choice.met_target), n))
    better, tests = beats(w, s)
    if better:
        why = f"; better than the simpler {s} beyond noise — {tests}"
        return choice.model_copy(update={"reason": choice.reason + why, "tests": tests})
    r, k = simpler[s]
    kind = "uniform merge" if simplicity[s][0] == 0 < simplicity[w][0] else "model restoring less"
    reason = (
        f"the rule's pick {w} is not better than {s} beyond noise on the tasks that decide R and K — {tests}; "
        f"the simpler {kind} {s} is chosen (R={r:.3f}, K={k:.3f})"
    )
    return Choice(
        chosen=s,
        rule=choice.rule + "; the simpler model where the difference is noise",
        met_target=choice.met_target,
        reason=reason,
        first_pick=w,
        tests=tests,
    )


def choose(points: Mapping[str, Point], target_retention: float | None = None) -> Choice:
    """Apply the choice rule to {name: (R, K)}."""
    valid = {n: (r, k) for n, (r, k) in points.items() if r is not None and k is not None}
    if target_retention is not None:
        rule = f"most K among R ≥ {target_retention:g}"
        if not valid:
            return Choice(chosen=None, rule=rule, met_target=False, reason="no model has both R and K defined")
        meeting = {n: p for n, p in valid.items() if p[0] >= target_retention}
        if meeting:
            name = max(meeting, key=lambda n: (meeting[n][1], meeting[n][0]))
            r, k = meeting[name]
            why = f"{len(meeting)} of {len(valid)} models reach R ≥ {target_retention:g}; {name} keeps the most K"
            return Choice(chosen=name, rule=rule, met_target=True, reason=f"{why} (R={r:.3f}, K={k:.3f})")
        name = max(valid, key=lambda n: (valid[n][0], valid[n][1]))
        why = f"no model reaches R ≥ {target_retention:g}; {name} has the highest R ({valid[name][0]:.3f})"
        return Choice(chosen=name, rule=rule, met_target=False, reason=why)
    rule = "best balanced point: max harmonic mean of clip(R,0,1) and clip(K,0,1)"
    if not valid:
        return Choice(chosen=None, rule=rule, reason="no model has both R and K defined")
    name = max(valid, key=lambda n: (balance(*valid[n]), *valid[n]))
    r, k = valid[name]
    return Choice(chosen=name, rule=rule, reason=f"balance {balance(r, k):.3f} (R={r:.3f}, K={k:.3f})")


def compare_to_baselines(
    candidates: Mapping[str, Point], baselines: Mapping[str, Point], names: Sequence[str] | None = None
) -> list[Comparison]:
    """For each candidate: the baseline nearest in K (and the R difference), nearest in R (and the K difference)."""
    base_ok = {n: (r, k) for n, (r, k) in baselines.items() if r is not None and k is not None}
    out = []
    for name in names or list(candidates):
        r, k = candidates[name]
        if r is None or k is None:
            continue
        cmp = Comparison(candidate=name, retention=r, gain_kept=k)
        if base_ok:
            bk = min(base_ok, key=lambda n: (abs(base_ok[n][1] - k), n))
            br = min(base_ok, key=lambda n: (abs(base_ok[n][0] - r), n))
            cmp.equal_k_baseline, (cmp.equal_k_baseline_r, cmp.equal_k_baseline_k) = bk, base_ok[bk]
            cmp.delta_r = r - base_ok[bk][0]
            cmp.equal_r_baseline, (cmp.equal_r_baseline_r, cmp.equal_r_baseline_k) = br, base_ok[br]
            cmp.delta_k = k - base_ok[br][1]
            cmp.dominated_by = sorted(
                n for n, (r2, k2) in base_ok.items() if r2 >= r and k2 >= k and (r2 > r or k2 > k)
            )
        out.append(cmp)
    return out

"""The measured planner against an unguided black-box search over every unit's t, on the same probe objective.

Both sides use the same probes, the same objective and constraint (spear_mm.measured.planner.Objective: share
of the general-probe damage recovered, losing at most `--max-domain-loss` of the domain-probe gain) and the same
optimiser family (optuna TPE with a constraint, t on a 0.05 grid). The planner starts from the weight-only
ranking and the measured per-unit effects (2 evaluations per unit), then a knapsack plan, then refines it; the
blind search starts from nothing and searches all units at once. Printed: evaluations and seconds each needs to
reach the planner's final objective value (within the planner's noise tolerance), and their ratio. Also the
uniform-SLERP curve on the same probes, for the plan-versus-curve comparison.

    python bench/planner_bench.py                       # the planted pico pair (tests/planted_pair.py)
    python bench/planner_bench.py --pair demo           # SmolLM2-135M + the demo CPT under ~/.cache/spear-mm
    python bench/planner_bench.py --pair custom --base B --adapted A --general G.jsonl --domain D.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from spear_mm.io.pair import open_pair  # noqa: E402
from spear_mm.measured.planner import Objective, PlannerConfig, plan_units  # noqa: E402
from spear_mm.measured.probe import ProbeEvaluator, load_probes  # noqa: E402
from spear_mm.scoring.layers import analyze  # noqa: E402


def demo_pair() -> dict[str, Path]:
    """The pair `spear-mm demo` builds with its defaults, and the probes its planner uses (held out of the CPT
    and of the evaluation)."""
    from spear_mm.demo.models import cache_root
    from spear_mm.demo.run import (
        DEMO_CORPUS,
        DEMO_DOMAIN_PROBE,
        PROBE_SAMPLES,
        PROBE_SEED,
        DemoConfig,
        cpt_cache_path,
        cpt_options,
    )
    from spear_mm.measured.samples import base_sample_path

    cache = cache_root()  # $SPEAR_MM_CACHE or ~/.cache/spear-mm, as the demo
    base = cache / "smollm2-135m-instruct"
    adapted = cpt_cache_path(base, [DEMO_CORPUS], cache, cpt_options(DemoConfig())) if base.is_dir() else base
    general = base_sample_path(base, *PROBE_SAMPLES, PROBE_SEED)
    if not (adapted / "config.json").is_file() or not general.is_file():
        raise SystemExit(f"no demo pair under {cache} (run `spear-mm demo` once), or use --pair planted / custom")
    return {"base": base, "adapted": adapted, "general": general, "domain": DEMO_DOMAIN_PROBE}


def planted_pair(root: Path) -> dict[str, Path]:
    from planted_pair import save_planted_pair

    return save_planted_pair(root)


def blind_search(ev: ProbeEvaluator, obj: Objective, config: PlannerConfig, target: float, max_evals: int, seed: int):
    """optuna TPE over every unit's t from scratch; stops once a feasible plan reaches `target`."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started, trace = time.perf_counter(), []
    units = list(ev.units)

    def objective(trial: optuna.Trial) -> float:
        ts = {u: round(trial.suggest_float(u, 0.0, 1.0, step=config.t_step), 6) for u in units}
        r = ev.evaluate({u: t for u, t in ts.items() if t > 0})
        value, ok = obj.value(r), obj.violation(r) <= 0
        trial.set_constraint("c", obj.violation(r))
        trace.append((ev.evaluations, time.perf_counter() - started, value, ok))
        if ok and value >= target:
            trial.study.stop()
        return value

    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10)
    optuna.create_study(direction="maximize", sampler=sampler).optimize(objective, n_trials=max_evals)
    return trace


def first_reach(trace, target: float):
    for row in trace:
        evals, seconds, value, ok = (
            (row.evaluations, row.seconds, row.value, row.feasible) if hasattr(row, "value") else row
        )
        if ok and value >= target:
            return evals, seconds
    return None, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", choices=("planted", "demo", "custom"), default="planted")
    for name in ("base", "adapted", "general", "domain"):
        ap.add_argument(f"--{name}", type=Path, default=None, help=f"--pair custom: the {name} folder or probe file")
    ap.add_argument("--budget", type=int, default=30, help="the planner's refinement budget")
    ap.add_argument("--blind-max", type=int, default=300, help="most evaluations the blind search may spend")
    ap.add_argument("--probe-tokens", type=int, default=512)
    ap.add_argument("--max-domain-loss", type=float, default=0.1)
    ap.add_argument("--probe-units", type=int, default=None, help="the planner measures only the top N units")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--blind-seeds", type=int, default=1, help="repeat the blind search with this many seeds")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="planner-bench-"))
    if args.pair == "custom":
        paths = {k: getattr(args, k) for k in ("base", "adapted", "general", "domain")}
        if None in paths.values():
            ap.error("--pair custom needs --base, --adapted, --general and --domain")
    else:
        paths = demo_pair() if args.pair == "demo" else planted_pair(tmp)
    pair = open_pair(paths["base"], paths["adapted"])
    probes = load_probes(paths["adapted"], paths["general"], paths["domain"], args.probe_tokens)
    t0 = time.perf_counter()
    scores = analyze(paths["base"], paths["adapted"], workers=args.threads)
    score_seconds = time.perf_counter() - t0
    config = PlannerConfig(budget=args.budget, max_domain_loss=args.max_domain_loss, probe_units=args.probe_units)

    ev = ProbeEvaluator(pair, probes)
    res = plan_units(ev, scores.unit_ranking(), config)
    target = res.value - config.tolerance
    p_evals, p_secs = first_reach(res.trace, target)
    print(f"ranking (weight-only): {', '.join(scores.unit_ranking())}")
    print(f"pair {args.pair}: {len(ev.units)} units; probes {probes.general_tokens}+{probes.domain_tokens} tokens; "
          f"weight scores {score_seconds:.1f} s")  # fmt: skip
    print(f"planner: value {res.value:.4f} (feasible {res.feasible}) after {ev.evaluations} evaluations, "
          f"{res.seconds:.1f} s; reached {target:.4f} at evaluation {p_evals} ({p_secs:.1f} s)")  # fmt: skip
    print("  plan: " + ", ".join(f"{u}={t:g}" for u, t in sorted(res.ts.items())))
    print("  knapsack: " + ", ".join(f"{u}={t:g}" for u, t in sorted(res.greedy.items())))

    obj = Objective(res.refs["base"], res.refs["adapted"], config)
    blind = []
    for seed in range(args.blind_seeds):
        blind_ev = ProbeEvaluator(pair, probes)
        blind_ev.evaluate(dict.fromkeys(blind_ev.units, 1.0)), blind_ev.evaluate({})  # the same two references
        trace = blind_search(blind_ev, obj, config, target, args.blind_max, seed)
        b_evals, b_secs = first_reach(trace, target)
        best = max((v for _, _, v, ok in trace if ok), default=-math.inf)
        blind.append({"seed": seed, "best": best, "evaluations": blind_ev.evaluations, "reach_evaluations": b_evals,
                      "reach_seconds": b_secs})  # fmt: skip
        print(f"blind TPE (seed {seed}): best feasible value {best:.4f} after {blind_ev.evaluations} evaluations; "
              f"reached {target:.4f}: " + (f"at evaluation {b_evals} ({b_secs:.1f} s)" if b_evals else "never"))  # fmt: skip
    reached = sorted(b["reach_evaluations"] for b in blind if b["reach_evaluations"])
    median = reached[len(reached) // 2] if len(reached) == len(blind) else None
    ratio = p_evals / median if p_evals and median else None
    bound = f"≤ {p_evals / args.blind_max:.3f} (blind did not always reach it)" if p_evals and not median else None
    print(
        f"ratio planner / blind (median over {len(blind)} seeds) evaluations: " + (f"{ratio:.3f}" if ratio else bound)
    )

    curve = []
    for i in range(1, 10):
        r = ev.evaluate(dict.fromkeys(ev.units, i / 10))
        curve.append({"t": i / 10, "recovered": obj.recovered(r), "domain_kept": obj.domain_kept(r),
                      "feasible": obj.violation(r) <= 0})  # fmt: skip
    plan_k = obj.domain_kept(res.result)
    print(f"uniform curve on the probes (plan: recovered {obj.recovered(res.result):.3f}, domain kept {plan_k:.3f}):")
    for c in curve:
        print(f"  t={c['t']:.1f}: recovered {c['recovered']:.3f}, domain kept {c['domain_kept']:.3f}"
              + ("" if c["feasible"] else "  (breaks the domain constraint)"))  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps({
            "pair": args.pair, "units": len(ev.units), "probe_tokens": [probes.general_tokens, probes.domain_tokens],
            "planner": {"value": res.value, "evaluations": ev.evaluations, "seconds": res.seconds,
                        "reach_evaluations": p_evals, "reach_seconds": p_secs, "plan": res.ts, "knapsack": res.greedy},
            "blind": blind,
            "ratio": ratio, "uniform_curve": curve, "plan_domain_kept": plan_k,
        }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()

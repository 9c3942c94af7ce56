"""The configurations a run compares: SPEAR-MM policy plans, an optional fraction × t sweep, and the baselines.

Every candidate is a named `Plan`; names are stable so a re-run finds its earlier results:
    conservative | balanced | aggressive      policy presets (spear_mm.planning.policies)
    <file stem>                               a plan YAML passed as a policy
    sweep-f<fraction>-t<t>                    top-`fraction` layers restored with SLERP factor t
    measured                                  the measured planner's plan (spear_mm.measured.planner)
    uniform-t<t>                              every tensor SLERPed with the same t (WiSE-FT style); t on a grid
                                              (default 0.1 … 0.9): the uniform curve every plan must beat
    task-arith-l<λ>                           base + λ·(adapted − base) on every tensor
    ties-d<density>                           base + the top-`density` |ΔW| entries of every tensor (TIES trim)
    regmean-a<α> | fisher-a<α>                a data-aware operator at α on every tensor (pipeline/operators.py)
The plain-CPT baseline is the adapted model itself (evaluated as `adapted`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from spear_mm.errors import SpearError
from spear_mm.evaluation.uniform_curve import UNIFORM_GRID
from spear_mm.planning.plan import Plan, Provenance
from spear_mm.planning.policies import PRESETS, make_plan
from spear_mm.scoring.table import ScoreTable

Kind = Literal["policy", "sweep", "baseline", "operator"]
TASK_ARITHMETIC_LAMBDAS = (0.5, 0.75)
TIES_DENSITY = 0.2
N_FIXED_BASELINES = len(TASK_ARITHMETIC_LAMBDAS) + 1  # + TIES; the uniform curve adds one per point of its grid
DEFAULT_SWEEP = {"fractions": (0.1, 0.25, 0.5), "t": (0.5, 0.7, 0.9)}


@dataclass(frozen=True)
class Candidate:
    """One configuration to merge and evaluate."""

    name: str
    kind: Kind
    plan: Plan
    description: str


def _num(x: float) -> str:
    return f"{x:g}"


def policy_candidates(scores: ScoreTable, policies: Sequence[str], rank_by: str = "score") -> list[Candidate]:
    """Plans of the named policies (presets, from the `rank_by` ranking), or plan YAML files given by path
    (named by their stem). `measured` is left out here: the pipeline runs the planner as its own step."""

    out = []
    for policy in policies:
        if policy == "measured":
            continue
        path = Path(policy).expanduser()
        if policy.endswith((".yaml", ".yml")):
            plan = Plan.load(path)
            if plan.num_layers != scores.num_layers:
                raise SpearError(
                    f"{path}: the plan is for {plan.num_layers} layers, the model has {scores.num_layers}. "
                    "Make it from this pair's scores (spear-mm plan)."
                )
            out.append(Candidate(path.stem, "policy", plan, f"plan file {path.name}: {plan.summary()}"))
            continue
        if policy not in PRESETS:
            raise SpearError(
                f"unknown policy '{policy}': use {', '.join(PRESETS)}, measured, or the path of a plan YAML file "
                "(spear-mm plan writes one)."
            )
        plan = make_plan(scores, policy, rank_by=rank_by)
        fraction, t = PRESETS[policy]
        how = f"t={_num(t)}" if policy != "aggressive" else "t=0.9 for the top quarter, 0.6 for the rest"
        by = "" if rank_by == "score" else f", ranked by {rank_by}"
        out.append(Candidate(policy, "policy", plan, f"SPEAR-MM {policy}: top {fraction:.0%} of units{by}, {how}"))
    return out


def check_policy_names(policies: Sequence[str]) -> None:
    """Each of `policies` is a preset, 'measured' or a plan .yaml file, and names a candidate of its own."""
    names = []
    for policy in policies:
        plan_file = policy.endswith((".yaml", ".yml"))
        if not plan_file and policy not in (*PRESETS, "measured"):
            raise SpearError(
                f"unknown policy {policy!r}: use {', '.join(PRESETS)}, measured, or the path of a plan YAML file "
                "(spear-mm plan writes one)."
            )
        names.append(Path(policy).stem if plan_file else policy)
    twice = [n for n in dict.fromkeys(names) if names.count(n) > 1 or n in ("base", "adapted")]
    if twice:
        raise SpearError(
            f"two candidates would be named {twice[0]!r} (a policy given twice, or a plan file named like a preset "
            "or base/adapted): give each once, or rename the plan file."
        )


def check_plan_files(policies: Sequence[str]) -> None:
    """The plan files among `policies` exist and are valid plans (read before any scoring, again when used)."""
    for policy in policies:
        if policy.endswith((".yaml", ".yml")):
            Plan.load(Path(policy).expanduser())


def parse_sweep(sweep: str | Mapping[str, Sequence[float]] | bool | None) -> dict[str, tuple[float, ...]] | None:
    """`"f=0.1,0.25;t=0.5,0.9"`, a mapping {fractions, t}, True (the default grid) or None (no sweep)."""
    if sweep is None or sweep is False:
        return None
    if sweep is True or sweep == "default":
        return {k: tuple(v) for k, v in DEFAULT_SWEEP.items()}
    if isinstance(sweep, str):
        parts: dict[str, list[str]] = {}
        for chunk in sweep.replace(" ", "").split(";"):
            key, sep, values = chunk.partition("=")
            if not sep or not values:
                raise SpearError(
                    f"--sweep '{sweep}': write it as 'f=0.1,0.25,0.5;t=0.5,0.7,0.9', or 'default' for that grid."
                )
            parts[{"f": "fractions", "fraction": "fractions"}.get(key, key)] = values.split(",")
        sweep = parts
    unknown = set(sweep) - {"fractions", "t"}
    if unknown:
        raise SpearError(f"--sweep: unknown key(s) {sorted(unknown)}; use f (fractions of layers) and t.")
    try:
        grid = {k: tuple(float(v) for v in sweep.get(k, DEFAULT_SWEEP[k])) for k in ("fractions", "t")}
    except ValueError as exc:
        raise SpearError(f"--sweep: not a number ({exc}).") from None
    for k, values in grid.items():
        if not values or any(not 0.0 < v <= 1.0 for v in values):
            raise SpearError(f"--sweep {k}: values must lie in (0, 1], got {list(values)}.")
    return grid


def sweep_candidates(
    scores: ScoreTable, grid: Mapping[str, Sequence[float]] | None, rank_by: str = "score"
) -> list[Candidate]:
    """One plan per (fraction, t): the top `fraction` of units by impact restored with SLERP factor t."""

    if not grid:
        return []
    out = []
    for fraction, t in itertools.product(grid["fractions"], grid["t"]):
        plan = make_plan(scores, "fraction", fraction=fraction, t=t, rank_by=rank_by)
        name = f"sweep-f{_num(fraction)}-t{_num(t)}"
        out.append(Candidate(name, "sweep", plan, f"top {fraction:.0%} of units, SLERP t={_num(t)}"))
    return out


def baseline_candidates(
    num_layers: int, provenance: Mapping[str, str | None] | None = None, uniform_ts: Sequence[float] = UNIFORM_GRID
) -> list[Candidate]:
    """Uniform SLERP on the `uniform_ts` grid (the uniform curve), task arithmetic and a TIES-trimmed delta,
    applied to every tensor (embeddings included). Points equal to another candidate are evaluated once."""
    prov = dict(provenance or {})
    if any(not 0.0 < t < 1.0 for t in uniform_ts):
        raise SpearError(f"uniform grid {list(uniform_ts)}: every t must lie strictly between 0 and 1.")

    def uniform(t: float, policy: str, params: dict, **kw) -> Plan:
        return Plan.uniform(
            t, num_layers, include_non_layers=True, provenance=Provenance(policy=policy, params=params, **prov), **kw
        )

    out = [
        Candidate(
            f"uniform-t{_num(t)}",
            "baseline",
            uniform(t, "uniform", {"t": t}),
            f"uniform SLERP of every tensor, t={_num(t)} (WiSE-FT style)",
        )
        for t in sorted(set(uniform_ts))
    ]
    out += [
        Candidate(
            f"task-arith-l{_num(lam)}",
            "baseline",
            uniform(1.0 - lam, "task_arithmetic", {"lambda": lam}, method="task_arithmetic"),
            f"task arithmetic: base + {_num(lam)}·(adapted − base)",
        )
        for lam in TASK_ARITHMETIC_LAMBDAS
    ]
    out.append(
        Candidate(
            f"ties-d{_num(TIES_DENSITY)}",
            "baseline",
            uniform(0.0, "ties", {"density": TIES_DENSITY}, method="ties", density=TIES_DENSITY),
            f"TIES-style trimmed delta: base + the top {TIES_DENSITY:.0%} |ΔW| entries of every tensor",
        )
    )
    return out


def check_unique(candidates: Sequence[Candidate]) -> None:
    seen: set[str] = {"base", "adapted"}
    for c in candidates:
        if c.name in seen:
            raise SpearError(
                f"two candidates are named '{c.name}' (or a plan file is named like a reserved model); "
                "rename the plan file."
            )
        seen.add(c.name)

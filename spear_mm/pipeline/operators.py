"""Data-aware operator curves in a run (issue 18): the probe statistics step, and one candidate per (operator, α)
— e.g. `regmean-a0.5`: every linear layer of the blocks merged by RegMean at α, every other tensor SLERPed at
t = α — so each operator is judged as a curve against the uniform-SLERP curve, point by point (ΔR at equal K and
a paired test against the nearest uniform point), and the choice rule picks from all candidates."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from spear_mm.errors import SpearError
from spear_mm.measured.planner import general_probe_for
from spear_mm.merging.methods import METHODS
from spear_mm.pipeline.candidates import Candidate
from spear_mm.pipeline.context import RunContext
from spear_mm.pipeline.summary import StageCost
from spear_mm.planning.plan import Plan, Provenance
from spear_mm.statistics.collect import collect_statistics, load_probes
from spear_mm.statistics.store import StatsMeta

SAMPLE_TOKENS = 160  # tokens per base sample when the general probe is sampled from the base


def _num(x: float) -> str:
    return f"{x:g}"


def operators_step(ctx: RunContext, prov: Mapping) -> tuple[list[Candidate], tuple[Path, str] | None, list[StageCost]]:
    """The run's operator candidates, the statistics (folder, key) the measured planner may use, and the stage."""
    if not ctx.config.operators:
        return [], None, []
    stats, meta, stage = statistics_step(ctx)
    candidates = operator_candidates(ctx.pair.num_layers, ctx.config.operators, stats, meta, prov)
    return candidates, (stats, meta.key), [stage]


def statistics_step(ctx: RunContext) -> tuple[Path, StatsMeta, StageCost]:
    """RUN/stats/: the statistics the operators need (general probe: the run's, else base samples; domain
    probe: the run's `domain_probe`), reused when the pair, probes and kinds are unchanged."""
    c, pair = ctx.config, ctx.pair
    if not c.domain_probe:
        raise SpearError("operators need a domain probe: pass --domain-probe FILE (held-out domain text).")
    started = time.perf_counter()
    tokens = c.stats_tokens
    general = Path(c.general_probe) if c.general_probe else None
    if general is None:
        n = math.ceil(tokens / SAMPLE_TOKENS)
        general = general_probe_for(pair, ctx.run_dir / "planner", n=n, tokens=SAMPLE_TOKENS)
    probes = load_probes(pair.adapted.path, general, Path(c.domain_probe), tokens)
    out = ctx.run_dir / "stats"
    meta = collect_statistics(pair, probes, out, kinds=tuple(c.operators), device=c.device, progress=ctx.progress)
    seconds = round(time.perf_counter() - started, 3)
    ran = sum(meta.seconds.values())
    detail = f"{', '.join(meta.kinds)}; {probes.info('general').tokens} + {probes.info('domain').tokens} tokens"
    status = "ran" if seconds >= 0.5 * ran else "skipped"
    return out, meta, StageCost(name="probe statistics", seconds=ran, device=c.device, status=status, detail=detail)


def operator_candidates(
    num_layers: int, operators: Mapping[str, Sequence[float]], stats: Path, meta: StatsMeta, prov: Mapping
) -> list[Candidate]:
    """`<operator>-a<α>` for every α of every operator's grid."""
    out = []
    for op, alphas in operators.items():
        for a in sorted(set(alphas)):
            provenance = Provenance(policy=op, params={"alpha": a, "stats": meta.key}, **dict(prov))
            plan = Plan.uniform(
                a, num_layers, include_non_layers=True, method=op, statistics=str(stats), provenance=provenance
            )
            what = METHODS[op].title or op
            out.append(Candidate(f"{op}-a{_num(a)}", "operator", plan, f"{what} at α={_num(a)}, other tensors SLERP"))
    return out

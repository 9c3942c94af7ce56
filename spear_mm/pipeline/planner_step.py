"""The measured planner as a resumable step of `spear-mm run` (RUN/planner/).

RUN/planner/measured.yaml is the plan, with a `.step` sidecar keyed by the scores, the content of both probe
files, the planner's settings and the ranking; RUN/planner/evaluations.jsonl caches every probe evaluation,
so an interrupted planner resumes where it stopped and a finished one is not run again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spear_mm.errors import SpearError
from spear_mm.io.files import content_key, file_key
from spear_mm.io.pair import Pair
from spear_mm.measured.objective import PROBE_TOKENS
from spear_mm.measured.planner import PlannerConfig, general_probe_for, measured_plan
from spear_mm.pipeline.candidates import Candidate
from spear_mm.pipeline.config import RunConfig
from spear_mm.pipeline.context import RunContext
from spear_mm.pipeline.steps import Steps
from spear_mm.pipeline.summary import StageCost
from spear_mm.planning.plan import Plan
from spear_mm.progress import ProgressCallback
from spear_mm.scoring.probes import read_texts
from spear_mm.scoring.table import ScoreTable

STAGE = "measured planner (probes)"
_NO_DOMAIN_PROBE = (
    "the measured policy needs a domain probe: pass --domain-probe FILE (held-out CPT text, .txt or "
    ".jsonl with a 'text' field) to `spear-mm run`, or drop 'measured' from --policies."
)


def check_probes(config: RunConfig) -> None:
    """Before any work: the measured planner's probe files (when it is among the policies) are UTF-8 text (their
    token counts are checked when the planner tokenises them; that it has a domain probe, by RunConfig)."""
    if "measured" not in config.policies:
        return
    for path in (config.domain_probe, config.general_probe):
        if path is not None:
            read_texts(path)


def measured_candidate(
    pair: Pair,
    scores: ScoreTable,
    run_dir: Path,
    steps: Steps,
    *,
    domain_probe: str | Path | None,
    general_probe: str | Path | None = None,
    config: PlannerConfig | None = None,
    rank_by: str = "score",
    probe_tokens: int = PROBE_TOKENS,
    device: str = "cpu",
    method: str = "slerp",
    statistics: tuple[Path, str] | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[Candidate, StageCost]:
    """The `measured` candidate, planned now or read back from a finished step. With a data-aware `method` and
    `statistics` (folder, content key) the planner searches that operator as well as SLERP."""
    if domain_probe is None:
        raise SpearError(_NO_DOMAIN_PROBE)
    config = config or PlannerConfig()
    folder = run_dir / "planner"
    general = Path(general_probe) if general_probe else general_probe_for(pair, folder)
    domain = Path(domain_probe)
    if not domain.is_file():
        raise SpearError(f"{domain}: domain probe file not found.")
    out = folder / "measured.yaml"
    key = content_key(
        scores=scores.content_hash(),
        general=file_key(general),
        domain=file_key(domain),
        config=config.key_dump(),
        rank_by=rank_by,
        tokens=probe_tokens,
    )
    if method != "slerp" and statistics is not None:  # runs without an operator keep their old key
        key = content_key(key=key, method=method, statistics=statistics[1])

    def compute() -> Plan:
        operator = dict(method=method, statistics=statistics[0]) if method != "slerp" and statistics else {}
        plan = measured_plan(
            scores,
            pair,
            general,
            domain,
            config,
            rank_by=rank_by,
            probe_tokens=probe_tokens,
            cache_path=folder / "evaluations.jsonl",
            device=device,
            progress=progress,
            **operator,
        )
        plan.save(out)
        return plan

    def extra(plan: Plan) -> dict[str, Any]:
        m = plan.measurement
        detail = f"{m.evaluations} probe evaluations ({m.cached} cached), {m.general_tokens}+{m.domain_tokens} tokens"
        return dict(detail=detail, evaluations=m.evaluations)

    done = steps.cached("measured planner", out, key, compute, lambda _: Plan.load(out), device=device, extra=extra)
    plan, detail = done.value, done.record.extra.get("detail", "")
    status = "skipped" if done.skipped else "ran"
    stage = StageCost(name=STAGE, seconds=done.seconds, device=device, status=status, detail=detail)
    restored = sum(1 for r in plan.layers if r.action != "keep") + sum(1 for u in plan.units if plan.unit_t(u) > 0)
    how = plan.measurement.objective if plan.measurement else "measured"
    return Candidate("measured", "policy", plan, f"measured planner: {restored} units restored; {how}"), stage


def measured_step(
    ctx: RunContext, scores: ScoreTable, statistics: tuple[Path, str] | None = None
) -> tuple[Candidate, StageCost]:
    """The measured planner's plan, as a resumable step of its own; with the run's operators (their statistics:
    folder and key) it searches the first operator as well as SLERP."""
    c = ctx.config  # its planner options were validated with the config (measured.objective.PlannerOptions)
    return measured_candidate(
        ctx.pair,
        scores,
        ctx.run_dir,
        ctx.steps,
        domain_probe=c.domain_probe,
        general_probe=c.general_probe,
        config=c.planner.planner_config(),
        rank_by=c.rank_by,
        device=c.device,
        probe_tokens=c.planner.probe_tokens,
        method=next(iter(c.operators), "slerp"),
        statistics=statistics,
        progress=ctx.progress,
    )

"""The measured planner as a resumable step of `spear-mm run` (RUN/planner/).

RUN/planner/measured.yaml is the plan, with a `.step` sidecar keyed by the scores, the content of both probe
files, the planner's settings and the ranking; RUN/planner/evaluations.jsonl caches every probe evaluation,
so an interrupted planner resumes where it stopped and a finished one is not run again.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from spear_mm.calibration.planner import PlannerConfig, general_probe_for, measured_plan
from spear_mm.errors import SpearError
from spear_mm.io.files import content_key
from spear_mm.io.pair import Pair
from spear_mm.pipeline.candidates import Candidate
from spear_mm.pipeline.context import RunContext
from spear_mm.pipeline.steps import Steps
from spear_mm.pipeline.summary import StageCost
from spear_mm.planning.plan import Plan
from spear_mm.scoring.table import ScoreTable

STAGE = "measured planner (probes)"


def _file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


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
    probe_tokens: int = 1024,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Candidate, StageCost]:
    """The `measured` candidate, planned now or read back from a finished step."""
    if domain_probe is None:
        raise SpearError(
            "the measured policy needs a domain probe: pass --domain-probe FILE (held-out CPT text, .txt or "
            ".jsonl with a 'text' field) to `spear-mm run`, or drop 'measured' from --policies."
        )
    config = config or PlannerConfig()
    folder = run_dir / "planner"
    started = time.perf_counter()
    general = Path(general_probe) if general_probe else general_probe_for(pair, folder)
    domain = Path(domain_probe)
    if not domain.is_file():
        raise SpearError(f"{domain}: domain probe file not found.")
    out = folder / "measured.yaml"
    key = content_key(scores=scores.content_hash(), general=_file_hash(general), domain=_file_hash(domain),
                      config=config.model_dump(mode="json"), rank_by=rank_by, tokens=probe_tokens)  # fmt: skip
    record = steps.finished(out, key)
    if record is not None:
        steps.skipped("measured planner", record)
        plan = Plan.load(out)
        stage = StageCost(name=STAGE, seconds=record.seconds, device=device, status="skipped",
                          detail=record.extra.get("detail", ""))  # fmt: skip
    else:
        plan = measured_plan(scores, pair, general, domain, config, rank_by=rank_by, probe_tokens=probe_tokens,
                             cache_path=folder / "evaluations.jsonl", device=device, progress=progress)  # fmt: skip
        plan.save(out)
        m = plan.measurement
        seconds = round(time.perf_counter() - started, 3)
        detail = f"{m.evaluations} probe evaluations ({m.cached} cached), {m.general_tokens}+{m.domain_tokens} tokens"
        steps.record(out, "measured planner", key, seconds, device, detail=detail, evaluations=m.evaluations)
        stage = StageCost(name=STAGE, seconds=seconds, device=device, detail=detail)
    restored = sum(1 for r in plan.layers if r.action != "keep") + sum(1 for u in plan.units if plan.unit_t(u) > 0)
    how = plan.measurement.objective if plan.measurement else "measured"
    return Candidate("measured", "policy", plan, f"measured planner: {restored} units restored; {how}"), stage


def measured_step(ctx: RunContext, scores: ScoreTable) -> tuple[Candidate, StageCost]:
    """The measured planner's plan, as a resumable step of its own."""
    c = ctx.config
    knobs = dict(c.planner)
    tokens = int(knobs.pop("probe_tokens", None) or 1024)
    try:
        planner_config = PlannerConfig(**{k: v for k, v in knobs.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise SpearError(f"measured planner option {err['loc'][0]}: {err['msg']}.") from exc
    return measured_candidate(ctx.pair, scores, ctx.run_dir, ctx.steps, domain_probe=c.domain_probe,
                              general_probe=c.general_probe, config=planner_config, rank_by=c.rank_by,
                              device=c.device, probe_tokens=tokens,
                              progress=lambda done, total: ctx.report("planner", done, total))  # fmt: skip

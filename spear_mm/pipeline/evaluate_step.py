"""The evaluation stage of `spear-mm run` (RUN/eval/): base, adapted and every candidate merged in memory,
evaluated on the same items through the executor. Each result is saved (with its `.step` sidecar) the moment it
arrives; a result whose key is unchanged is reused, and candidates that merge to the same model are evaluated once.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from spear_mm.evaluation.metrics import EvalResult
from spear_mm.executors import LazyExecutor
from spear_mm.io.files import content_key
from spear_mm.pipeline.candidates import Candidate
from spear_mm.pipeline.context import RunContext
from spear_mm.pipeline.jobs import (
    CandidateJob,
    CandidateResult,
    clear_caches,
    evaluate_candidate,
    plan_effect_hash,
    tasks_hash,
)
from spear_mm.pipeline.summary import StageCost
from spear_mm.planning.plan import Plan


def candidate_jobs(ctx: RunContext, candidates: list[Candidate], tasks) -> list[CandidateJob]:
    """One job per model: base, adapted, then every candidate (its plan as YAML, merged in memory)."""
    c, pair = ctx.config, ctx.pair
    common = dict(
        base=str(pair.base.path),
        adapted=str(pair.adapted.path),
        tasks=tasks,
        device=c.device,
        threads=c.threads,
        batch_size=c.batch_size,
        seed=c.seed,
        limit=c.limit,
        pair_key=f"{ctx.fp_b}-{ctx.fp_a}",
        backend=c.backend,
        lm_eval_tasks=ctx.lm_eval_tasks,
    )
    jobs = [
        CandidateJob(name="base", plan_yaml=None, model_path=str(pair.base.path), **common),
        CandidateJob(name="adapted", plan_yaml=None, model_path=str(pair.adapted.path), **common),
    ]
    return jobs + [CandidateJob(name=x.name, plan_yaml=x.plan.to_yaml(), **common) for x in candidates]


def _eval_key(ctx: RunContext, job: CandidateJob, tasks_key: str) -> str:
    if job.plan_yaml is None:
        model = ("folder", ctx.fp_b if job.name == "base" else ctx.fp_a)
    else:
        model = ("merge", ctx.fp_b, ctx.fp_a, plan_effect_hash(Plan.from_yaml(job.plan_yaml), ctx.pair.params))
    return content_key(model=model, tasks=tasks_key, device=job.device)


def evaluate_step(
    ctx: RunContext, jobs: list[CandidateJob], tasks, skipped: dict[str, str], ex: LazyExecutor
) -> tuple[dict[str, EvalResult], StageCost]:
    """Evaluate every job not already finished through the executor; each result is saved as it arrives.
    Candidates that merge to the same model (same key) are evaluated once and the result saved for each."""
    extra_key = (jobs[0].backend, jobs[0].lm_eval_tasks) if jobs else ()
    steps, eval_dir, tkey = ctx.steps, ctx.run_dir / "eval", tasks_hash(tasks, *extra_key)
    retire_stale(eval_dir, {j.name for j in jobs})
    results: dict[str, EvalResult] = {}
    keys, reused, done_by_key = {}, 0.0, {}
    for job in jobs:
        keys[job.name] = key = _eval_key(ctx, job, tkey)
        path = eval_dir / f"{job.name}.json"
        record = steps.reuse(f"evaluate {job.name}", path, key)
        if record is not None:
            results[job.name] = done_by_key[key] = CandidateResult.load(path)
            reused += record.seconds
    total, started = len(jobs), time.perf_counter()
    twins: dict[str, list[CandidateJob]] = {}
    for job in jobs:
        if job.name not in results:
            twins.setdefault(keys[job.name], []).append(job)
    ctx.report("evaluate", len(results), total)

    def save(job: CandidateJob, r: CandidateResult, same_as: str | None = None) -> None:
        r = r.model_copy(update={"model": job.name, "skipped": {**r.skipped, **skipped}})
        path = r.save(eval_dir / f"{job.name}.json")
        extra = dict(eval_seconds=r.seconds, merge_seconds=r.merge_seconds, worker=r.worker, same_as=same_as)
        steps.record(path, f"evaluate {job.name}", keys[job.name], r.seconds + r.merge_seconds, job.device, **extra)
        results[job.name] = r
        ctx.report("evaluate", len(results), total)

    for key in [k for k in twins if k in done_by_key]:  # a new name for a model already evaluated
        for job in twins.pop(key):
            save(job, done_by_key[key], same_as=done_by_key[key].model)
    pending = [group[0] for group in twins.values()]

    def on_result(i: int, r: CandidateResult) -> None:
        first, *others = twins[keys[pending[i].name]]
        save(first, r)
        for job in others:
            save(job, r, same_as=first.name)

    if pending and ctx.progress and ex.kind == "local":  # per-item bars; other executors pickle the jobs
        pending = [dataclasses.replace(j, progress=ctx.progress) for j in pending]
    if pending:
        try:
            ex.get().map(evaluate_candidate, pending, labels=[j.name for j in pending], on_result=on_result)
        finally:
            clear_caches()
    status = "ran" if not reused else "partly skipped" if pending else "skipped"
    detail = f"{len(pending)} evaluated, {total - len(pending)} reused; {sum(len(t.items) for t in tasks)} items"
    seconds = time.perf_counter() - started + reused
    device = jobs[0].device
    return {j.name: results[j.name] for j in jobs}, StageCost(
        name="evaluate (+ in-memory merge)", seconds=seconds, device=device, status=status, detail=detail
    )


def retire_stale(eval_dir: Path, names: set[str]) -> None:
    """Results of models this run no longer has move to eval/old/ (kept, out of the report); results in old/
    of models this run has again come back (their keys then decide whether they are reused)."""
    for path in sorted((eval_dir / "old").glob("*.json")):
        if path.stem in names and not (eval_dir / path.name).exists():
            path.replace(eval_dir / path.name)
            car = path.with_name(path.name + ".step")
            if car.exists():
                car.replace(eval_dir / car.name)
    for path in sorted(eval_dir.glob("*.json")):
        if path.stem not in names:
            (eval_dir / "old").mkdir(exist_ok=True)
            path.replace(eval_dir / "old" / path.name)
            car = path.with_name(path.name + ".step")
            if car.exists():
                car.replace(eval_dir / "old" / car.name)

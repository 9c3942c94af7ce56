"""`spear-mm run`: the whole SPEAR-MM loop in one resumable call.

    open pair → analyze (scores/) → plans (plans/) → evaluate base, adapted and every candidate, merged in
    memory, on the same items (eval/) → R, K, Pareto front → choose → write the chosen model (models/)
    → summary.json → report.md / report.html

Every step's output has a `.step` sidecar with the content hash of its inputs; a re-run skips what is
finished (see spear_mm/pipeline/steps.py and docs/pipeline.md). Candidate evaluations go through an executor
(in process, a process pool or Ray) and each result is saved the moment it arrives.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from spear_mm.errors import SpearError
from spear_mm.evaluation import load_tasks
from spear_mm.evaluation.lm_eval_tasks import LmEvalTasks, check_no_clash, preflight
from spear_mm.executors import LazyExecutor
from spear_mm.io.dtypes import parse_dtype
from spear_mm.io.files import content_key, file_key
from spear_mm.io.outputs import check_free_space
from spear_mm.io.pair import Pair, open_pair
from spear_mm.io.workdir import WorkDir, pair_owner, scored_pair
from spear_mm.measured.planner import general_probe_for
from spear_mm.merging.folder import MergeReport
from spear_mm.merging.merge import merge, resolve_device
from spear_mm.pipeline.candidates import (
    N_FIXED_BASELINES,
    Candidate,
    baseline_candidates,
    check_plan_files,
    check_unique,
    parse_sweep,
    policy_candidates,
    sweep_candidates,
)
from spear_mm.pipeline.config import RunConfig
from spear_mm.pipeline.context import RunContext
from spear_mm.pipeline.evaluate_step import candidate_jobs, evaluate_step
from spear_mm.pipeline.jobs import plan_hash
from spear_mm.pipeline.operators import operators_step
from spear_mm.pipeline.planner_step import check_probes, measured_step
from spear_mm.pipeline.steps import Cached, StepRecord, Steps, sidecar
from spear_mm.pipeline.summary import RunSummary, StageCost, cpt_cost, summarise
from spear_mm.planning.plan import Plan
from spear_mm.progress import ProgressCallback
from spear_mm.report.build import write_report
from spear_mm.report.tables import report_tables
from spear_mm.scoring.layers import analyze
from spear_mm.scoring.table import ScoreTable

log = logging.getLogger(__name__)
__all__ = ["RunConfig", "RunSummary", "run"]


def run(
    base: str | Path | None = None,
    adapted: str | Path | None = None,
    out: str | Path | None = None,
    *,
    config: RunConfig | str | Path | None = None,
    progress: ProgressCallback | None = None,
    force: bool = False,
    inputs: tuple[str | Path, ...] = (),
    **options: Any,
) -> RunSummary:
    """Score, plan, merge, validate and choose for one base/adapted pair; everything lands in `out` (resumable).

    Args:
        base, adapted, out: the pair and the run folder (override the config's values when given).
        config: a `RunConfig`, or the path of a run.yaml; `options` override its fields (see `RunConfig`:
            suites, policies, sweep, baselines, target_retention, limit, device, executor, …).
        progress: called with a `ProgressEvent` for the stages analyze, stats, planner, evaluate, items and merge.
        force: `out` holds another pair's run: move it aside (`NAME.replaced-TIME`) and start afresh (without
            it, such a folder is refused).
        inputs: more files the run reads (e.g. its config file); `out` must not overlap them or the config's files.
    Returns:
        The `RunSummary` (also RUN/summary.json); RUN/run.yaml keeps the resolved config.

    Example:
        >>> run("base/", "adapted/", "run/", data_dir="data/", target_retention=0.9)  # doctest: +SKIP
    """
    given = {k: v for k, v in dict(base=base, adapted=adapted, out=out, **options).items() if v is not None}
    inputs = (*inputs, *([config] if isinstance(config, (str, Path)) else []))  # a run.yaml is read too
    if isinstance(config, RunConfig):
        config = RunConfig.model_validate({**config.model_dump(), **given})
    else:
        config = RunConfig.build(config, **given)
    if config.out is None:
        raise SpearError("no run folder: pass -o/--out (or out: in the run config).")
    if config.operators and not config.domain_probe:
        raise SpearError("operators need --domain-probe FILE: held-out domain text, read by the adapted model.")
    started = time.perf_counter()
    run_dir = Path(config.out).expanduser().resolve()
    # different families or mismatched tensors fail here, and a CUDA request on a CPU-only torch, before any work
    pair = open_pair(config.base, config.adapted, allow_vocab_extension=config.allow_vocab_extension)
    resolve_device(config.device)
    # RUN/run.yaml is the run's own record: `run --config RUN/run.yaml` repeats the run and rewrites it
    files = [pair.base.path, pair.adapted.path, *(p for p in inputs if Path(p).resolve() != run_dir / "run.yaml")]
    owner = pair_owner(pair.base.fingerprint(), pair.adapted.fingerprint())
    # not an input; one writer; no links out; this pair's (recorded); dead temps cleaned
    legacy = scored_pair("scores/scores.json")
    with WorkDir(run_dir, files + config.inputs(), owner=owner, force=force, what="run folder", legacy=legacy):
        return _run(config, pair, run_dir, progress, started)


REPORT_BYTES = 2_000_000  # report.md + report.html (figures embedded) + report_files/*.png, with room


def eval_file_bytes(n_items: int) -> int:
    """A bound on one model's eval/<name>.json (+ sidecar): a few kB plus one record per item."""
    return 8_000 + 400 * n_items


def _run(config: RunConfig, pair: Pair, run_dir: Path, progress: ProgressCallback | None, started: float) -> RunSummary:
    stages, clock = [], time.perf_counter()
    fingerprints = pair.base.fingerprint(), pair.adapted.fingerprint()
    ctx = RunContext(config, pair, run_dir, Steps(run_dir), *fingerprints, progress)
    grid = parse_sweep(config.sweep)
    tasks, skipped = _load_tasks(config, ctx.lm_eval_tasks)
    check_probes(config)  # the planner's probe files, before any scoring
    check_plan_files(config.policies)  # and the plan files
    n_baselines = N_FIXED_BASELINES + len(set(config.uniform_grid))
    n_candidates = len(config.policies) + (len(grid["fractions"]) * len(grid["t"]) if grid else 0)
    n_candidates += n_baselines * config.baselines + sum(len(set(g)) for g in config.operators.values())
    n_items = sum(len(t.items) for t in tasks) if tasks else 0
    models_bytes = pair.adapted.nbytes * (n_candidates if config.keep_all else 1)
    check_free_space(run_dir, models_bytes + (n_candidates + 2) * eval_file_bytes(n_items) + REPORT_BYTES)
    config.save(run_dir / "run.yaml")
    stages.append(StageCost(name="open pair + load tasks", seconds=time.perf_counter() - clock, device="cpu"))
    ctx.steps.event("run", "started", base=str(pair.base.path), adapted=str(pair.adapted.path))
    gpus = (1 if config.device.startswith("cuda") else 0) if config.executor == "ray" else None
    with LazyExecutor(config.executor, config.workers, config.ray_address, gpus) as ex:
        scores, stage = _analyze(ctx, ex)
        stages.append(stage)
        prov = {"base": ctx.fp_b, "adapted": ctx.fp_a}
        rank_by = config.rank_by
        candidates = policy_candidates(scores, config.policies, rank_by) + sweep_candidates(scores, grid, rank_by)
        operators, statistics, op_stages = operators_step(ctx, prov)
        stages += op_stages
        if "measured" in config.policies:
            measured, stage = measured_step(ctx, scores, statistics)
            candidates.append(measured)
            stages.append(stage)
        candidates += baseline_candidates(pair.num_layers, prov, tuple(config.uniform_grid)) if config.baselines else []
        candidates += operators
        check_unique(candidates)
        candidates = _write_plans(ctx, candidates, scores)
        results, stage = evaluate_step(ctx, candidate_jobs(ctx, candidates, tasks), tasks, skipped, ex)
    stages.append(stage)

    cpt = cpt_cost(pair.adapted.path, config.cpt_cost_seconds)
    summary = summarise(ctx, candidates, results, stages, skipped, suites=_suite_label(config.suites), cpt=cpt)
    summary.stages.append(_write_models(ctx, candidates, summary.chosen))
    written = {c.name: run_dir / "models" / c.name for c in candidates} | {"adapted": pair.adapted.path}
    summary.chosen_model_path = str(written[summary.chosen]) if summary.chosen in written else None
    summary.tables = report_tables(summary)
    if config.report:
        summary.report_html, summary.report_md = str(run_dir / "report.html"), str(run_dir / "report.md")
    summary.seconds = round(time.perf_counter() - started, 3)
    summary.save(run_dir / "summary.json")
    if config.report:
        write_report(run_dir)
    ctx.steps.event("run", "finished", time.perf_counter() - started, chosen=summary.chosen)
    return summary


# -- stages ----------------------------------------------------------------------------------------------------
def _load_tasks(config: RunConfig, registered: LmEvalTasks | None = None):
    """The suites' tasks (missing data skipped); lm-eval's registered tasks have their datasets checked here."""
    suites = config.suites
    skipped: dict[str, str] = {}
    if registered is not None:
        preflight(registered)  # before any model work
    if registered and not suites:
        return (), skipped
    tasks = load_tasks(suites, config.data_dir, config.limit, config.seed, skip_missing=True, skipped=skipped)
    if not tasks and not registered and not skipped:
        raise SpearError(
            f"no task to evaluate: --suite {suites!r} names no suite and no lm-eval task names are given. Pass "
            "--suite (general,domain by default, demo, or a suite .yaml) or --tasks."
        )
    if not tasks and not registered:
        raise SpearError(
            f"no task to evaluate: the data of every task of '{suites}' is missing "
            f"({'; '.join(skipped.values())}). Pass --data-dir with the suite files, or another --suite."
        )
    if registered is not None:
        check_no_clash(registered, tasks)
    groups = {t.spec.group for t in tasks}
    for group, what in (("general", "general retention R"), ("domain", "domain gain kept K")):
        if group not in groups and not registered:
            log.warning("no %s task left to evaluate: %s is undefined and no model can be chosen", group, what)
    return tuple(tasks), skipped


def _analyze(ctx: RunContext, ex: LazyExecutor) -> tuple[ScoreTable, StageCost]:
    device, pair = ctx.config.device, ctx.pair
    config = ctx.config.scoring.model_copy(update={"device": device})
    out = ctx.run_dir / "scores"
    probe, ground_truth = None, ctx.config.rank_by == "restore_gain"
    if ctx.config.rank_by != "score":  # a probe ranking needs the data-aware scores of `analyze --probe`
        gp = ctx.config.general_probe
        probe = Path(gp) if gp else general_probe_for(pair, ctx.run_dir / "planner")
    key = content_key(base=ctx.fp_b, adapted=ctx.fp_a, config=config.model_dump(mode="json"))
    if probe is not None:  # runs without a probe keep their old key (and their finished scores)
        key = content_key(key=key, probe=file_key(probe), ground_truth=ground_truth)

    def compute() -> ScoreTable:
        if ex.kind == "ray":
            ex.get()  # start Ray once: scoring attaches to it, evaluation reuses it
        where = {} if ex.kind == "local" else dict(executor=ex.kind, ray_address=ex.ray_address, workers=ex.workers)
        vocab = bool(pair.vocab_extension)
        return analyze(
            pair.base.path,
            pair.adapted.path,
            out,
            device=device,
            config=config,
            progress=ctx.progress,
            allow_vocab_extension=vocab,
            probe=probe,
            ground_truth=ground_truth,
            **where,
        )

    done = ctx.steps.cached(
        "analyze",
        out,
        key,
        compute,
        lambda _: ScoreTable.load(out),
        also=[out / "scores.json"],
        device=device,
        extra=lambda table: {"tensors": len(table.modules)},
    )
    if done.skipped:  # the seconds as recorded, so a resumed run reports the same costs
        return done.value, StageCost(name="analyze", seconds=done.seconds, device=device, status="skipped")
    detail = f"{len(done.value.modules)} tensors"
    return done.value, StageCost(name="analyze", seconds=done.seconds, device=device, detail=detail)


def _write_plans(ctx: RunContext, candidates: list[Candidate], scores: ScoreTable) -> list[Candidate]:
    """plans/<name>.yaml. A plan file whose generating inputs are unchanged is kept as it is — including a
    user's edits, which then change the candidate's evaluation key; a stale edited file is backed up first."""
    return [_write_plan(ctx, c, scores.content_hash()) for c in candidates]


def _write_plan(ctx: RunContext, c: Candidate, scores_hash: str) -> Candidate:
    path = ctx.run_dir / "plans" / f"{c.name}.yaml"

    def load(record: StepRecord) -> Plan:
        plan = Plan.load(path)
        if plan_hash(plan) != record.extra.get("plan_hash"):
            log.info("plans/%s.yaml was edited by hand: evaluating the edited plan", c.name)
        return plan

    def compute() -> Plan:
        old = ctx.steps.finished(path, _any_key(path)) if path.exists() else None
        if old is not None and plan_hash(Plan.load(path)) != old.extra.get("plan_hash"):
            backup = path.with_name(f"{c.name}.edited-{int(time.time())}.yaml")
            shutil.copy2(path, backup)
            log.warning("plans/%s.yaml had hand edits for other scores; kept a copy as %s", c.name, backup.name)
        c.plan.save(path)
        return c.plan

    extra = dict(plan_hash=plan_hash(c.plan), kind=c.kind, scores=scores_hash)
    done = ctx.steps.cached("plan", path, content_key(plan=plan_hash(c.plan)), compute, load, extra=lambda _: extra)
    return Candidate(c.name, c.kind, done.value, c.description) if done.skipped else c


def _any_key(path: Path) -> str:
    try:
        return StepRecord.model_validate_json(sidecar(path).read_text()).key
    except (OSError, ValueError):
        return ""


def _suite_label(suites) -> str:
    if isinstance(suites, (str, Path)):
        return str(suites)
    items = suites if isinstance(suites, (list, tuple)) else [suites]
    return ",".join(str(getattr(s, "name", s.get("name", "?") if isinstance(s, dict) else s)) for s in items)


def _write_models(ctx: RunContext, candidates: list[Candidate], chosen: str | None) -> StageCost:
    """models/<name>: the chosen candidate (every candidate with keep_all); other folders this run wrote go."""
    device, keep_all = ctx.config.device, ctx.config.keep_all
    keep = {c.name for c in candidates} if keep_all else {chosen} & {c.name for c in candidates}
    models = ctx.run_dir / "models"
    for folder in sorted(models.glob("*")) if models.is_dir() else []:
        if folder.is_dir() and folder.name not in keep and folder.with_name(folder.name + ".step").exists():
            shutil.rmtree(folder)
            folder.with_name(folder.name + ".step").unlink()
    done = [_write_model(ctx, c, models / c.name) for c in candidates if c.name in keep]
    seconds = sum(d.seconds for d in done)
    written, reused = sum(not d.skipped for d in done), sum(d.skipped for d in done)
    status = "skipped" if reused and not written else "ran"
    detail = f"{written} written, {reused} reused"
    name = "write chosen model" + ("s" if keep_all else "")
    return StageCost(name=name, seconds=seconds, device=device, status=status, detail=detail)


def _write_model(ctx: RunContext, c: Candidate, out: Path) -> Cached[MergeReport | None]:
    pair, out_dtype = ctx.pair, ctx.config.out_dtype
    dtype = {"out_dtype": str(parse_dtype(out_dtype))} if out_dtype else {}
    key = content_key(base=ctx.fp_b, adapted=ctx.fp_a, plan=plan_hash(c.plan), **dtype)

    def compute() -> MergeReport:
        return merge(
            pair.base.path,
            pair.adapted.path,
            out,
            c.plan,
            device=ctx.config.device,
            force=True,
            threads=ctx.config.threads,
            progress=ctx.progress,
            out_dtype=out_dtype,
            allow_vocab_extension=bool(pair.vocab_extension),
        )

    return ctx.steps.cached(
        f"merge {c.name}",
        out,
        key,
        compute,
        lambda _: None,
        also=[out / "config.json"],
        device=ctx.config.device,
        extra=lambda report: {"bytes": report.bytes_written},
    )

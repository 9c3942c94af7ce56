"""`spear-mm run`: the whole SPEAR-MM loop in one resumable call.

    open pair → analyze (scores/) → plans (plans/) → evaluate base, adapted and every candidate, merged in
    memory, on the same items (eval/) → R, K, Pareto front → choose → write the chosen model (models/)
    → summary.json → report.md / report.html

Every step's output has a `.step` sidecar with the content hash of its inputs; a re-run skips what is
finished (see spear_mm/steps.py and docs/pipeline.md). Candidate evaluations go through an executor
(in process, a process pool or Ray) and each result is saved the moment it arrives.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from spear_mm.candidates import (
    N_BASELINES,
    UNIFORM_TS,
    Candidate,
    baseline_candidates,
    check_unique,
    parse_sweep,
    policy_candidates,
)
from spear_mm.checkpoint import Pair, open_pair
from spear_mm.errors import SpearError
from spear_mm.executors import KINDS, make_executor
from spear_mm.jobs import (
    CandidateJob,
    CandidateResult,
    ItemProgress,
    clear_caches,
    evaluate_candidate,
    plan_effect_hash,
    plan_hash,
    tasks_hash,
)
from spear_mm.metrics import EvalResult
from spear_mm.plan import Plan
from spear_mm.run_summary import RunSummary, StageCost, cpt_cost, report_tables, summarise
from spear_mm.score_table import ScoreConfig, ScoreTable, check_rank_by
from spear_mm.steps import Steps, content_key
from spear_mm.writer import check_free_space, check_output

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]  # (stage, done, total); stages: analyze, evaluate, merge
__all__ = ["RunSummary", "run"]


def run(
    base: str | Path,
    adapted: str | Path,
    out: str | Path,
    *,
    suites: str | Sequence = "general,domain",
    data_dir: str | Path | None = None,
    policies: Sequence[str] = ("conservative", "balanced", "aggressive"),
    sweep: str | dict | bool | None = None,
    baselines: bool = True,
    target_retention: float | None = None,
    choose_from: str = "all",
    limit: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    threads: int | None = None,
    workers: int | None = None,
    batch_size: int = 16,
    keep_all: bool = False,
    executor: str = "local",
    ray_address: str | None = None,
    cpt_cost_seconds: float | None = None,
    score_config: ScoreConfig | None = None,
    rank_by: str = "score",
    uniform_grid: Sequence[float] | None = None,
    domain_probe: str | Path | None = None,
    general_probe: str | Path | None = None,
    planner: dict | None = None,
    title: str | None = None,
    report: bool = True,
    progress: Progress | None = None,
) -> RunSummary:
    """Score, plan, merge, validate and choose for one base/adapted pair; everything lands in `out` (resumable).

    suites: 'general,domain', 'demo', a suite YAML, or task specs (tasks whose data file is missing are skipped
    with a warning). policies: preset names, 'measured' (needs `domain_probe`; `planner`: PlannerConfig fields
    and `probe_tokens`),
    or plan YAML paths; presets restore the top of the `rank_by` ranking. uniform_grid: the t of the uniform
    curve (default 0.1 … 0.9). sweep: 'f=0.1,0.25;t=0.5,0.9' or True for the
    default grid. choose_from: 'all' (plans, sweep, baselines and plain CPT) or 'plans' (SPEAR-MM plans only).
    """
    started = time.perf_counter()
    if executor not in KINDS:
        raise SpearError(f"unknown executor {executor!r}: use one of {', '.join(KINDS)}.")
    check_rank_by(rank_by)
    if choose_from not in ("all", "plans"):
        raise SpearError(f"choose_from={choose_from!r}: use 'all' or 'plans'.")
    if target_retention is not None and not 0 < target_retention <= 2:
        raise SpearError(f"target retention {target_retention} is not a ratio (write 0.9 for 90%).")
    if isinstance(policies, str):
        policies = [p.strip() for p in policies.split(",") if p.strip()]
    run_dir, stages = Path(out).expanduser().resolve(), []
    clock = time.perf_counter()
    pair = open_pair(base, adapted)  # different families or mismatched tensors fail here, before any work
    check_output(run_dir, [pair.base.path, pair.adapted.path], force=True)
    fp_b, fp_a = pair.base.fingerprint(), pair.adapted.fingerprint()
    grid = parse_sweep(sweep)
    tasks, skipped = _load_tasks(suites, data_dir, limit, seed)
    uniform_grid = tuple(uniform_grid) if uniform_grid is not None else UNIFORM_TS
    n_baselines = N_BASELINES - len(UNIFORM_TS) + len(set(uniform_grid))
    n_candidates = len(policies) + (len(grid["fractions"]) * len(grid["t"]) if grid else 0) + n_baselines * baselines
    check_free_space(run_dir, pair.adapted.nbytes * (n_candidates if keep_all else 1))
    stages.append(StageCost(name="open pair + load tasks", seconds=time.perf_counter() - clock, device="cpu"))
    steps = Steps(run_dir)
    steps.event("run", "started", base=str(pair.base.path), adapted=str(pair.adapted.path))
    gpus = (1 if device.startswith("cuda") else 0) if executor == "ray" else None
    with _LazyExecutor(executor, workers, ray_address, gpus) as ex:
        probe = None
        if rank_by != "score":  # a probe ranking needs the data-aware scores of `analyze --probe`
            from spear_mm.measured_planner import general_probe_for

            probe = Path(general_probe) if general_probe else general_probe_for(pair, run_dir / "planner")
        scores, stage = _analyze(pair, run_dir, steps, fp_b, fp_a, device, score_config, progress, ex,
                                 probe=probe, ground_truth=rank_by == "restore_gain")  # fmt: skip
        stages.append(stage)
        prov = {"base": fp_b, "adapted": fp_a}
        candidates = policy_candidates(scores, policies, rank_by) + _sweep(scores, grid, rank_by)
        if "measured" in policies:
            from spear_mm.planner_step import measured_candidate

            knobs = dict(planner or {})
            tokens = int(knobs.pop("probe_tokens", None) or 1024)
            measured, stage = measured_candidate(pair, scores, run_dir, steps, domain_probe=domain_probe,
                                                 general_probe=general_probe, config=_planner_config(knobs),
                                                 rank_by=rank_by, device=device, probe_tokens=tokens)  # fmt: skip
            candidates.append(measured)
            stages.append(stage)
        candidates += baseline_candidates(pair.num_layers, prov, uniform_grid) if baselines else []
        check_unique(candidates)
        candidates = _write_plans(candidates, run_dir, steps, scores)
        jobs = _jobs(pair, candidates, tasks, device, threads, batch_size, seed, limit, (fp_b, fp_a))
        results, stage = _evaluate(jobs, pair, run_dir, steps, fp_b, fp_a, tasks, skipped, ex, progress)
    stages.append(stage)

    summary = summarise(pair, candidates, results, scores, stages, run_dir, fp_b, fp_a, skipped,
                        suites=_suite_label(suites), limit=limit, seed=seed, device=device, title=title,
                        target_retention=target_retention, choose_from=choose_from,
                        cpt=cpt_cost(pair.adapted.path, cpt_cost_seconds))  # fmt: skip
    stage = _write_models(pair, candidates, summary.chosen, keep_all, run_dir, steps, device, threads, progress)
    summary.stages.append(stage)
    summary.chosen_model_path = (
        str(run_dir / "models" / summary.chosen)
        if summary.chosen in {c.name for c in candidates}
        else str(pair.adapted.path)
        if summary.chosen == "adapted"
        else None
    )
    summary.tables = report_tables(summary)
    if report:
        summary.report_html, summary.report_md = str(run_dir / "report.html"), str(run_dir / "report.md")
    summary.seconds = round(time.perf_counter() - started, 3)
    summary.save(run_dir / "summary.json")
    if report:
        from spear_mm.report import write_report

        write_report(run_dir)
    steps.event("run", "finished", time.perf_counter() - started, chosen=summary.chosen)
    return summary


# -- stages ----------------------------------------------------------------------------------------------------
def _load_tasks(suites, data_dir, limit, seed):
    from spear_mm.evaluation import load_tasks

    skipped: dict[str, str] = {}
    tasks = load_tasks(suites, data_dir, limit, seed, skip_missing=True, skipped=skipped)
    if not tasks:
        raise SpearError(
            f"no task to evaluate: the data of every task of '{suites}' is missing "
            f"({'; '.join(skipped.values())}). Pass --data-dir with the suite files, or another --suite."
        )
    groups = {t.spec.group for t in tasks}
    for group, what in (("general", "general retention R"), ("domain", "domain gain kept K")):
        if group not in groups:
            log.warning("no %s task left to evaluate: %s is undefined and no model can be chosen", group, what)
    return tuple(tasks), skipped


def _analyze(pair: Pair, run_dir, steps, fp_b, fp_a, device, config, progress, ex, *, probe: Path | None = None,
             ground_truth: bool = False) -> tuple[ScoreTable, StageCost]:  # fmt: skip
    import hashlib

    from spear_mm.scoring import analyze

    config = (config or ScoreConfig()).model_copy(update={"device": device})
    out = run_dir / "scores"
    probe_key = hashlib.sha256(probe.read_bytes()).hexdigest()[:16] if probe else None
    key = content_key(base=fp_b, adapted=fp_a, config=config.model_dump(mode="json"))
    if probe_key:  # runs without a probe keep their old key (and their finished scores)
        key = content_key(key=key, probe=probe_key, ground_truth=ground_truth)
    record = steps.finished(out, key, out / "scores.json")
    if record is not None:
        steps.skipped("analyze", record)
        return ScoreTable.load(out), StageCost(name="analyze", seconds=record.seconds, device=device, status="skipped")
    started = time.perf_counter()
    cb = (lambda _name, done, total: progress("analyze", done, total)) if progress else None
    if ex.kind == "ray":
        ex.get()  # start Ray once: scoring attaches to it, evaluation reuses it
    where = {} if ex.kind == "local" else {"executor": ex.kind, "ray_address": ex.ray_address, "workers": ex.workers}
    table = analyze(pair.base.path, pair.adapted.path, out, device=device, config=config, progress=cb,
                    alpha=config.alpha, aggregate=config.aggregate, probe=probe, ground_truth=ground_truth,
                    **where)  # fmt: skip
    seconds = round(time.perf_counter() - started, 4)  # as recorded, so a resumed run reports the same costs
    steps.record(out, "analyze", key, seconds, device, tensors=len(table.modules))
    return table, StageCost(name="analyze", seconds=seconds, device=device, detail=f"{len(table.modules)} tensors")


def _sweep(scores: ScoreTable, grid, rank_by: str = "score") -> list[Candidate]:
    from spear_mm.candidates import sweep_candidates

    return sweep_candidates(scores, grid, rank_by)


def _planner_config(planner: dict | None):
    from pydantic import ValidationError

    from spear_mm.measured_planner import PlannerConfig

    try:
        return PlannerConfig(**{k: v for k, v in (planner or {}).items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise SpearError(f"measured planner option {err['loc'][0]}: {err['msg']}.") from exc


def _write_plans(candidates: list[Candidate], run_dir: Path, steps: Steps, scores: ScoreTable) -> list[Candidate]:
    """plans/<name>.yaml. A plan file whose generating inputs are unchanged is kept as it is — including a
    user's edits, which then change the candidate's evaluation key; a stale edited file is backed up first."""
    out = []
    for c in candidates:
        path = run_dir / "plans" / f"{c.name}.yaml"
        key = content_key(plan=plan_hash(c.plan))
        record = steps.finished(path, key)
        if record is not None:
            plan = Plan.load(path)
            if plan_hash(plan) != record.extra.get("plan_hash"):
                log.info("plans/%s.yaml was edited by hand: evaluating the edited plan", c.name)
            out.append(Candidate(c.name, c.kind, plan, c.description))
            continue
        old = steps.finished(path, _any_key(path)) if path.exists() else None
        if old is not None and plan_hash(Plan.load(path)) != old.extra.get("plan_hash"):
            backup = path.with_name(f"{c.name}.edited-{int(time.time())}.yaml")
            shutil.copy2(path, backup)
            log.warning("plans/%s.yaml had hand edits for other scores; kept a copy as %s", c.name, backup.name)
        c.plan.save(path)
        steps.record(path, "plan", key, 0.0, plan_hash=plan_hash(c.plan), kind=c.kind, scores=scores.content_hash())
        out.append(c)
    return out


def _any_key(path: Path) -> str:
    from spear_mm.steps import StepRecord, sidecar

    try:
        return StepRecord.model_validate_json(sidecar(path).read_text()).key
    except (OSError, ValueError):
        return ""


def _jobs(pair: Pair, candidates, tasks, device, threads, batch_size, seed, limit, fps) -> list[CandidateJob]:
    common = dict(base=str(pair.base.path), adapted=str(pair.adapted.path), tasks=tasks, device=device,
                  threads=threads, batch_size=batch_size, seed=seed, limit=limit, pair_key="-".join(fps))  # fmt: skip
    jobs = [
        CandidateJob(name="base", plan_yaml=None, model_path=str(pair.base.path), **common),
        CandidateJob(name="adapted", plan_yaml=None, model_path=str(pair.adapted.path), **common),
    ]
    return jobs + [CandidateJob(name=c.name, plan_yaml=c.plan.to_yaml(), **common) for c in candidates]


def _eval_key(job: CandidateJob, pair: Pair, fp_b: str, fp_a: str, tasks_key: str) -> str:
    if job.plan_yaml is None:
        model = ("folder", fp_b if job.name == "base" else fp_a)
    else:
        model = ("merge", fp_b, fp_a, plan_effect_hash(Plan.from_yaml(job.plan_yaml), pair.params))
    return content_key(model=model, tasks=tasks_key, device=job.device)


def _evaluate(jobs, pair, run_dir, steps, fp_b, fp_a, tasks, skipped, ex, progress):
    """Evaluate every job not already finished through the executor; each result is saved as it arrives.
    Candidates that merge to the same model (same key) are evaluated once and the result saved for each."""
    eval_dir, tkey = run_dir / "eval", tasks_hash(tasks)
    _retire_stale(eval_dir, {j.name for j in jobs})
    results: dict[str, EvalResult] = {}
    keys, reused, done_by_key = {}, 0.0, {}
    for job in jobs:
        keys[job.name] = key = _eval_key(job, pair, fp_b, fp_a, tkey)
        path = eval_dir / f"{job.name}.json"
        record = steps.finished(path, key)
        if record is not None:
            results[job.name] = done_by_key[key] = CandidateResult.load(path)
            steps.skipped(f"evaluate {job.name}", record)
            reused += record.seconds
    total, started = len(jobs), time.perf_counter()
    twins: dict[str, list[CandidateJob]] = {}
    for job in jobs:
        if job.name not in results:
            twins.setdefault(keys[job.name], []).append(job)
    if progress:
        progress("evaluate", len(results), total)

    def save(job: CandidateJob, r: CandidateResult, same_as: str | None = None) -> None:
        r = r.model_copy(update={"model": job.name, "skipped": {**r.skipped, **skipped}})
        path = r.save(eval_dir / f"{job.name}.json")
        extra = dict(eval_seconds=r.seconds, merge_seconds=r.merge_seconds, worker=r.worker, same_as=same_as)
        steps.record(path, f"evaluate {job.name}", keys[job.name], r.seconds + r.merge_seconds, job.device, **extra)
        results[job.name] = r
        if progress:
            progress("evaluate", len(results), total)

    for key in [k for k in twins if k in done_by_key]:  # a new name for a model already evaluated
        for job in twins.pop(key):
            save(job, done_by_key[key], same_as=done_by_key[key].model)
    pending = [group[0] for group in twins.values()]

    def on_result(i: int, r: CandidateResult) -> None:
        first, *others = twins[keys[pending[i].name]]
        save(first, r)
        for job in others:
            save(job, r, same_as=first.name)

    if pending and progress and ex.kind == "local":  # per-item bars; other executors pickle the jobs
        pending = [dataclasses.replace(j, progress=ItemProgress(progress)) for j in pending]
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


class _LazyExecutor:
    """The run's executor, made on first use (a resumed run with nothing left to do starts none) and kept for the
    whole run, so a Ray instance started for scoring is reused by the evaluations."""

    def __init__(self, kind: str, workers: int | None, ray_address: str | None, num_gpus: int | None):
        self.kind, self.workers, self.ray_address, self.num_gpus = kind, workers, ray_address, num_gpus
        self._ex = None

    def get(self):
        if self._ex is None:
            self._ex = make_executor(self.kind, workers=self.workers, ray_address=self.ray_address,
                                     num_gpus=self.num_gpus)  # fmt: skip
        return self._ex

    def __enter__(self) -> _LazyExecutor:
        return self

    def __exit__(self, *exc) -> None:
        if self._ex is not None:
            self._ex.close()


def _retire_stale(eval_dir: Path, names: set[str]) -> None:
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


def _suite_label(suites) -> str:
    if isinstance(suites, (str, Path)):
        return str(suites)
    items = suites if isinstance(suites, (list, tuple)) else [suites]
    return ",".join(str(getattr(s, "name", s.get("name", "?") if isinstance(s, dict) else s)) for s in items)


def _write_models(pair, candidates, chosen, keep_all, run_dir, steps, device, threads, progress) -> StageCost:
    """models/<name>: the chosen candidate (every candidate with keep_all); other folders this run wrote go."""
    from spear_mm.merge import merge

    keep = {c.name for c in candidates} if keep_all else {chosen} & {c.name for c in candidates}
    models = run_dir / "models"
    for folder in sorted(models.glob("*")) if models.is_dir() else []:
        if folder.is_dir() and folder.name not in keep and folder.with_name(folder.name + ".step").exists():
            shutil.rmtree(folder)
            folder.with_name(folder.name + ".step").unlink()
    seconds, written, reused = 0.0, 0, 0
    for c in (c for c in candidates if c.name in keep):
        out = models / c.name
        key = content_key(base=pair.base.fingerprint(), adapted=pair.adapted.fingerprint(), plan=plan_hash(c.plan))
        record = steps.finished(out, key, out / "config.json")
        if record is not None:
            steps.skipped(f"merge {c.name}", record)
            seconds, reused = seconds + record.seconds, reused + 1
            continue
        cb = _bytes_progress(progress, pair.adapted.nbytes) if progress else None
        report = merge(pair.base.path, pair.adapted.path, out, c.plan, device=device, force=True, threads=threads,
                       progress=cb)  # fmt: skip
        steps.record(out, f"merge {c.name}", key, report.seconds, device, bytes=report.bytes_written)
        seconds, written = seconds + report.seconds, written + 1
    status = "skipped" if reused and not written else "ran"
    return StageCost(name="write chosen model" + ("s" if keep_all else ""), seconds=seconds, device=device,
                     status=status, detail=f"{written} written, {reused} reused")  # fmt: skip


def _bytes_progress(progress: Progress, total: int) -> Callable[[str, int], None]:
    done = [0]

    def cb(_name: str, nbytes: int) -> None:
        done[0] += nbytes
        progress("merge", done[0], total)

    return cb

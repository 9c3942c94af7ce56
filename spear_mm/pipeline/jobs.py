"""The unit of work the pipeline hands to an executor: evaluate one model — base, adapted, or a candidate merged
in memory from the pair and a plan — on already loaded tasks.

`evaluate_candidate(job)` is a top-level function of picklable arguments, so it runs the same in process, in a
process pool or on a Ray worker. A worker keeps one model built from the adapted checkpoint and overwrites its
weights for each candidate (`merge_into_model` writes every tensor), so nothing merged touches the disk.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from spear_mm.evaluation import evaluate, load_model
from spear_mm.evaluation.metrics import EvalResult
from spear_mm.evaluation.tasks import LoadedTask
from spear_mm.io.pair import open_pair
from spear_mm.merging.merge import merge_into_model
from spear_mm.planning.plan import Plan
from spear_mm.progress import ProgressCallback
from spear_mm.statistics.store import read_meta


@dataclass(frozen=True)
class CandidateJob:
    """Everything a worker needs: the pair's paths, the plan (YAML; None = evaluate `model_path` as saved),
    the loaded tasks (the same items for every model) and the evaluation settings."""

    name: str
    base: str
    adapted: str
    plan_yaml: str | None
    tasks: tuple[LoadedTask, ...]
    model_path: str | None = None  # for plan_yaml None: the folder to evaluate (base or adapted)
    device: str = "cpu"
    threads: int | None = None
    batch_size: int = 16
    seed: int = 0
    limit: int | None = None
    backend: str = "builtin"
    lm_eval_tasks: Any = None  # an LmEvalTasks: lm-eval registered tasks run by lm-eval itself
    pair_key: str = ""  # the pair's fingerprints: a worker's cached open pair is reused only for the same files
    progress: ProgressCallback | None = None  # in-process runs only (not picklable): `items` events


class CandidateResult(EvalResult):
    """An `EvalResult` plus what merging the candidate cost (saved in the same JSON; EvalResult.load reads it)."""

    merge_seconds: float = 0.0
    n_merged: int = 0
    n_lerp_fallback: int = 0
    worker: str = ""


def plan_hash(plan: Plan) -> str:
    """Hash of what the plan does (its creation time left out): equal plans give equal hashes."""
    data = plan.model_dump(mode="json")
    data["provenance"].pop("created", None)
    if not data["method_options"]:  # plans without them hash as before the field existed
        del data["method_options"]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def plan_effect_hash(plan: Plan, params) -> str:
    """Hash of what a plan does to this pair — method, density and every tensor's t — and nothing else, so two
    candidates that merge to the same model (a sweep point equal to a preset, a re-worded edit) share one
    evaluation. `params`: the pair's {name: ParamInfo}."""
    effect = {
        "method": plan.method,
        "density": plan.density if plan.uses_option("density") else None,
        "t": [(name, plan.t_for(p)) for name, p in params.items()],
    }
    if plan.unit_methods:
        effect["methods"] = [plan.method_for(p) for p in params.values()]
    if plan.method_options:
        effect["method_options"] = plan.method_options
    if plan.needs_statistics():  # the statistics' content key (not their folder) and RegMean's λ
        meta = read_meta(Path(plan.statistics)) if plan.statistics else None
        effect["statistics"] = (meta.key if meta else plan.statistics, plan.shrink)
    return hashlib.sha256(json.dumps(effect, sort_keys=True).encode()).hexdigest()[:16]


def tasks_hash(tasks: tuple[LoadedTask, ...] | list[LoadedTask], backend: str = "builtin", lm_eval: Any = None) -> str:
    """Hash of the task specs and the exact items sampled (so a changed data file or --limit changes it); a non-
    default back end and lm-eval's registered task names enter too (the builtin-only hash is unchanged)."""
    h = hashlib.sha256()
    if backend != "builtin" or lm_eval is not None:
        h.update(f"{backend}|{lm_eval.key() if lm_eval is not None else ''}".encode())
    for task in tasks:
        h.update(task.spec.model_dump_json().encode())
        for item in task.items:
            h.update(repr(item).encode())
    return h.hexdigest()[:16]


@lru_cache(maxsize=1)
def _template(adapted: str, device: str, pair_key: str):
    """The adapted model and tokenizer, loaded once per worker; candidates overwrite its weights in place."""

    return load_model(adapted, device)


@lru_cache(maxsize=1)
def _pair(base: str, adapted: str, pair_key: str):

    return open_pair(base, adapted, allow_vocab_extension=True)  # the driver validated the pair and its flag


def clear_caches() -> None:
    """Drop the worker's template model and open pair (frees the memory of one model)."""
    _template.cache_clear()
    _pair.cache_clear()


def evaluate_candidate(job: CandidateJob) -> CandidateResult:
    """Merge `job.plan_yaml` into an in-memory model (or load `job.model_path`) and evaluate it on `job.tasks`."""
    threads_before = torch.get_num_threads()
    if job.threads:
        torch.set_num_threads(job.threads)
    try:
        return _evaluate(job)
    finally:
        torch.set_num_threads(threads_before)


def _evaluate(job: CandidateJob) -> CandidateResult:
    import os
    import socket

    merge_seconds, n_merged, n_fallback = 0.0, 0, 0
    if job.plan_yaml is None:
        model, tokenizer = load_model(Path(job.model_path or job.adapted), job.device)
    else:
        model, tokenizer = _template(job.adapted, job.device, job.pair_key)
        plan = Plan.from_yaml(job.plan_yaml, source=f"plan of {job.name}")
        started = time.perf_counter()
        stats = merge_into_model(_pair(job.base, job.adapted, job.pair_key), plan, model, device=job.device)
        merge_seconds = time.perf_counter() - started
        n_merged = sum(s.action == "merge" for s in stats)
        n_fallback = sum(s.lerp_fallback for s in stats)
    result = evaluate(
        model,
        list(job.tasks),
        tokenizer=tokenizer,
        device=job.device,
        threads=job.threads,
        batch_size=job.batch_size,
        seed=job.seed,
        limit=job.limit,
        name=job.name,
        progress=job.progress,
        backend=job.backend,
        lm_eval_tasks=job.lm_eval_tasks,
    )
    if job.plan_yaml is None:
        result.model_path = str(Path(job.model_path or job.adapted).resolve())
        del model
    return CandidateResult(
        **result.model_dump(),
        merge_seconds=round(merge_seconds, 4),
        n_merged=n_merged,
        n_lerp_fallback=n_fallback,
        worker=f"{socket.gethostname()}:{os.getpid()}",
    )

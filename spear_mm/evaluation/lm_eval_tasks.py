"""lm-evaluation-harness's own registered tasks (`--backend lm-eval --tasks arc_easy,hellaswag`), run on the
in-memory model through `HFLM(pretrained=model)`.

Unlike `lm_eval_backend.py` (spear-mm's prepared items re-scored by lm-eval), here lm-eval builds the
prompts, filters and metrics from its task registry (plus `include_path` YAMLs). Its per-sample logs become
the same `TaskResult`/`ItemRecord`s as every other back end, so R, K, paired tests and the report work
unchanged. Datasets are loaded once up front (`preflight`): with `HF_DATASETS_OFFLINE=1` a dataset that is
not in the cache fails there, naming the task and the cache folder, before any model is loaded.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from spear_mm.errors import SpearError
from spear_mm.evaluation import aggregate as scoring
from spear_mm.evaluation.builtin import BuiltinScorer, model_max_length
from spear_mm.evaluation.lm_eval_backend import quiet_lm_eval
from spear_mm.evaluation.metrics import ItemRecord, TaskResult
from spear_mm.evaluation.tasks import LoadedTask, TaskSpec, TextItem
from spear_mm.progress import ProgressCallback, ProgressEvent

# The lm-eval registered task closest to each shipped task (docs/evaluation.md says how they differ); the
# domain tasks (FPB, Reuters) have none in lm-eval's registry.
SHIPPED_EQUIVALENTS: dict[str, str] = {
    "arc_easy": "arc_easy",
    "arc_challenge": "arc_challenge",
    "gsm8k": "gsm8k_cot",
    "wikitext2": "wikitext",
}


@dataclass(frozen=True)
class LmEvalTasks:
    """Registered lm-eval task (or group) names, by the R/K group they count in, and where extra YAMLs live."""

    general: tuple[str, ...] = ()
    domain: tuple[str, ...] = ()
    include_path: str | None = None

    @classmethod
    def from_options(
        cls, tasks: str | None, general: str | None, domain: str | None, include_path: str | None = None
    ) -> LmEvalTasks | None:
        """`--tasks` and `--general-tasks` count in R, `--domain-tasks` in K; None when no name is given."""
        spec = cls(_split(tasks) + _split(general), _split(domain), str(include_path) if include_path else None)
        both = set(spec.general) & set(spec.domain)
        if both:
            raise SpearError(f"lm-eval task(s) {sorted(both)} are given as both general and domain; pick one.")
        return spec if spec.names else None

    @property
    def names(self) -> tuple[str, ...]:
        return self.general + self.domain

    def group_of(self, name: str) -> str:
        return "domain" if name in self.domain else "general"

    def key(self) -> str:
        """What the results depend on (for the pipeline's resume keys)."""
        return f"lm-eval:{','.join(self.general)}|{','.join(self.domain)}|{self.include_path or ''}"


def _split(names: str | None) -> tuple[str, ...]:
    return tuple(x.strip() for x in (names or "").split(",") if x.strip())


def check_no_clash(spec: LmEvalTasks, tasks: Sequence[LoadedTask]) -> None:
    """A suite task and an lm-eval task of the same name would overwrite each other's result: refuse."""
    clash = sorted(set(preflight(spec)) & {t.name for t in tasks})
    if clash:
        raise SpearError(
            f"task name(s) {', '.join(map(repr, clash))} come both from --suite and from lm-eval's registry; "
            "results are keyed by task name, so drop one of them (e.g. evaluate the suite without it)."
        )


@lru_cache(maxsize=4)
def task_manager(include_path: str | None = None) -> Any:
    """lm-eval's task index with the YAMLs of `include_path` (built once per process and folder: indexing its
    ~15,000 registered tasks takes about 20 s)."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise SpearError("--tasks needs lm-evaluation-harness: pip install 'spear-mm[lm-eval]'") from exc
    if include_path and not os.path.isdir(include_path):
        raise SpearError(f"--lm-eval-include {include_path}: no such folder (a folder of lm-eval task YAMLs).")
    return TaskManager(include_path=include_path)


def _leaves(task_dict: dict, top: str | None = None) -> dict[str, tuple[str, Any]]:
    """lm-eval's nested {group: {task: Task}} (get_task_dict, before TaskManager.load in 0.4.10) flattened to
    {leaf task name: (requested name, Task)}."""
    out: dict[str, tuple[str, Any]] = {}
    for key, value in task_dict.items():
        name = key if isinstance(key, str) else getattr(key, "group_name", None) or str(key)
        if isinstance(value, dict):
            out.update(_leaves(value, top or name))
        elif value is not None:
            out[name] = (top or name, value)
    return out


@lru_cache(maxsize=4)
def preflight(spec: LmEvalTasks) -> dict[str, tuple[str, int]]:
    """Check every name is registered and load its dataset now (cache only with HF_DATASETS_OFFLINE=1);
    returns {leaf task: (the name asked for, number of documents)}. Raises SpearError before any model work."""
    manager = task_manager(spec.include_path)
    unknown = [n for n in spec.names if n not in manager.all_tasks]
    if unknown:
        hint = f" or in {spec.include_path}" if spec.include_path else " (add --lm-eval-include DIR for your YAMLs)"
        raise SpearError(
            f"lm-eval has no task or group named {', '.join(map(repr, unknown))}{hint}; "
            "`lm_eval ls tasks` lists the registered ones."
        )
    sizes: dict[str, tuple[str, int]] = {}
    for name in spec.names:
        try:
            leaves = _load(name, manager)
        except Exception as exc:  # noqa: BLE001 - datasets raises many types for a missing or unreachable dataset
            raise SpearError(_dataset_error(name, manager, exc)) from exc
        for leaf, (top, task) in leaves.items():
            sizes[leaf] = (top, len(task.eval_docs))
    return sizes


def _load(name: str, manager: Any) -> dict[str, tuple[str, Any]]:
    """{leaf task: (name, Task)} for a task, group or tag name (datasets are loaded here)."""
    if hasattr(manager, "load"):  # lm-eval >= 0.4.10: flat dicts of leaf tasks
        return {leaf: (name, task) for leaf, task in manager.load([name])["tasks"].items()}
    from lm_eval.tasks import get_task_dict

    return _leaves(get_task_dict([name], manager))


def _dataset_error(name: str, manager: Any, exc: Exception) -> str:
    import datasets

    entry = getattr(manager, "task_index", {}).get(name)
    path = getattr(entry, "yaml_path", None) or (entry.get("yaml_path") if isinstance(entry, dict) else None)
    offline = os.environ.get("HF_DATASETS_OFFLINE", "") not in ("", "0") or datasets.config.HF_DATASETS_OFFLINE
    where = f"the datasets cache {datasets.config.HF_DATASETS_CACHE}"
    fix = (
        f"HF_DATASETS_OFFLINE=1 is set and the dataset is not in {where}: run once online to fill the cache, "
        "or point HF_DATASETS_CACHE at a cache that has it"
        if offline
        else f"check the task's dataset_path/dataset_name and the network (datasets are cached in {where})"
    )
    return f"lm-eval task {name!r}{f' ({path})' if path else ''}: its dataset could not be loaded ({type(exc).__name__}: {str(exc)[:300]}). Fix: {fix}."


def run_registered(
    model: Any,
    tokenizer: Any,
    spec: LmEvalTasks,
    *,
    device: str = "cpu",
    batch_size: int = 16,
    max_length: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> dict[str, TaskResult]:
    """Run the registered tasks on the in-memory model; one `TaskResult` per leaf task (groups are expanded).

    `limit`: a seeded random sample of that many documents per task (lm-eval's `samples=`), not the first N.
    """
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM

    quiet_lm_eval()
    sizes = preflight(spec)
    manager = task_manager(spec.include_path)
    max_length = max_length or model_max_length(model)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length, device=device)
    counter = BuiltinScorer(model, tokenizer, torch.device(device), max_length=max_length)
    samples = None
    if limit is not None:
        samples = {t: sorted(random.Random(seed).sample(range(n), min(limit, n))) for t, (_, n) in sizes.items()}
    label = f"lm-eval · {','.join(spec.names)}"
    if progress:
        progress(ProgressEvent("items", 0, len(sizes), label))
    started = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(spec.names),
        task_manager=manager,
        log_samples=True,
        bootstrap_iters=0,
        samples=samples,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    seconds = (time.perf_counter() - started) / max(len(out["samples"]), 1)  # one lm-eval call: time split evenly
    version = getattr(lm_eval, "__version__", "?")
    results: dict[str, TaskResult] = {}
    for leaf, rows in out["samples"].items():
        rows = sorted(rows, key=lambda s: s["doc_id"])
        config = out["configs"][leaf]
        group = spec.group_of(sizes[leaf][0] if leaf in sizes else leaf)
        higher = out.get("higher_is_better", {}).get(leaf, {})
        result = _to_result(leaf, group, config, rows, out["results"][leaf], higher, counter)
        result.seconds, result.total = seconds, sizes[leaf][1] if leaf in sizes else None
        result.source = f"lm-eval {version} registered task {leaf!r}"
        results[leaf] = result
        if progress:
            progress(ProgressEvent("items", min(len(results), len(sizes)), len(sizes), label))
    return results


def _primary(rows: list[dict[str, Any]]) -> str:
    metrics = rows[0].get("metrics") or []
    if not metrics:
        raise SpearError(f"lm-eval logged no per-sample metric for task (doc 0 keys: {sorted(rows[0])}).")
    return metrics[0]


def _to_result(
    name: str,
    group: str,
    config: dict[str, Any],
    rows: list[dict[str, Any]],
    agg: dict[str, Any],
    higher: dict[str, bool],
    counter: Any,
) -> TaskResult:
    """lm-eval's per-sample log of one task as a `TaskResult` (per-item records for the paired tests)."""
    kind = config.get("output_type")
    if kind == "loglikelihood_rolling":  # the same perplexity code as the built-in back end (score: 1/ppl)
        texts = [str(r["arguments"][0][0]) for r in rows]
        task = LoadedTask(
            TaskSpec(name=name, kind="perplexity", loader="text", group=group),
            tuple(TextItem(str(r["doc_id"]), t) for r, t in zip(rows, texts, strict=True)),
            len(rows),
        )
        nll = [-float(_scalar(r["filtered_resps"])) for r in rows]
        return scoring.ppl_result(task, nll, [len(x) for x in counter.encode(texts, special=False)], 0.0)
    metric = _primary(rows)
    if higher.get(metric) is False:
        raise SpearError(
            f"lm-eval task {name!r}: its primary metric {metric!r} is lower-is-better and not a rolling "
            "perplexity; spear-mm needs a higher-is-better score for R and K. Use a task whose first metric is "
            "an accuracy or exact match."
        )
    values = [float(_scalar(r[metric])) for r in rows]
    n = len(rows)
    score = agg.get(f"{metric},none", agg.get(f"{metric},{rows[0].get('filter', 'none')}", sum(values) / n))
    metrics = {k.split(",")[0]: float(v) for k, v in agg.items() if "," in k and "_stderr" not in k and _is_number(v)}
    metrics[metric] = float(score)
    stderrs = {m: s for m, v in metrics.items() if 0 <= v <= 1 and (s := scoring.acc_stderr(v, n)) is not None}
    records, extra = _records(kind, rows, values), {}
    if kind == "multiple_choice":
        extra = _mc_distributions(rows, records)
    return TaskResult(
        task=name,
        kind="multiple_choice" if kind == "multiple_choice" else "generation",
        group=group,
        metric=metric,
        score=float(score),
        stderr=stderrs.get(metric),
        n=n,
        metrics=metrics,
        stderrs=stderrs,
        items=records,
        **extra,
    )


def _records(kind: str | None, rows: list[dict[str, Any]], values: list[float]) -> list[ItemRecord]:
    records = []
    for r, v in zip(rows, values, strict=True):
        binary = v in (0.0, 1.0)
        rec = ItemRecord(id=str(r["doc_id"]), correct=bool(v) if binary else None)
        if kind == "multiple_choice":
            choices = [str(a[1]).strip() for a in r["arguments"]]
            lls = [float(x[0]) for x in r["filtered_resps"]]
            target = r.get("target")
            rec.lls = [round(x, 5) for x in lls]
            rec.pred = choices[max(range(len(lls)), key=lls.__getitem__)]
            rec.gold = choices[target] if isinstance(target, int) and 0 <= target < len(choices) else str(target)
        else:
            rec.output = str(_scalar(r["filtered_resps"]))[:2000]
            rec.gold = str(r.get("target"))[:200]
        records.append(rec)
    return records


def _mc_distributions(rows: list[dict[str, Any]], records: list[ItemRecord]) -> dict[str, Any]:
    """Prediction/label counts; the majority baseline only when every item offers the same choices."""
    same_choices = len({tuple(str(a[1]) for a in r["arguments"]) for r in rows}) == 1
    labels = Counter(r.gold for r in records)
    return {
        "pred_distribution": dict(Counter(r.pred for r in records)),
        "label_distribution": dict(labels),
        "majority_baseline": max(labels.values()) / len(records) if same_choices else None,
    }


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _scalar(value: Any) -> Any:
    while isinstance(value, (list, tuple)):
        value = value[0]
    return value

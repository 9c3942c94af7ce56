"""The lm-evaluation-harness back end (`pip install 'spear-mm[lm-eval]'`).

Each loaded task is written as JSON lines of its *prepared* items (context, choices, label / text / prompt,
answer) and expressed as an lm-eval task dict (`dataset_path: json`, absolute `data_files` under a named
split), so lm-eval scores exactly the prompts the built-in back end scores. It runs offline
(`HF_HUB_OFFLINE=1`) on the in-memory model through `HFLM(pretrained=model, tokenizer=...)`, and the
per-sample outputs go through the same metric code as the built-in results.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from spear_mm.errors import SpearError
from spear_mm.evaluation import aggregate
from spear_mm.evaluation.builtin import BuiltinScorer, model_max_length
from spear_mm.evaluation.metrics import TaskResult
from spear_mm.evaluation.tasks import GenItem, LoadedTask, MCItem, TextItem
from spear_mm.io.scratch import scratch_dir
from spear_mm.progress import ProgressCallback, ProgressEvent

log = logging.getLogger(__name__)
SCRATCH_PREFIX = "spear-lm-eval-"  # $TMPDIR/spear-lm-eval-<pid>-<start>-<token> (spear_mm.io.scratch)


def lm_eval_name(task: LoadedTask) -> str:
    return f"spear_{task.name}"


def write_items(task: LoadedTask, path: Path) -> Path:
    """The task's prepared items as JSON lines, in item order (lm-eval's doc_id = position)."""
    with path.open("w", encoding="utf-8") as f:
        for item in task.items:
            if isinstance(item, MCItem):
                row: dict[str, Any] = {
                    "id": item.id,
                    "context": item.context,
                    "choices": list(item.choices),
                    "label": item.label,
                }
            elif isinstance(item, TextItem):
                row = {"id": item.id, "text": item.text}
            else:
                row = {"id": item.id, "prompt": item.prompt, "answer": item.answer}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def task_dict(task: LoadedTask, data_file: Path) -> dict[str, Any]:
    """An lm-eval task config for a prepared JSONL file (field names as templates: no Jinja rewriting)."""
    base: dict[str, Any] = {
        "task": lm_eval_name(task),
        "dataset_path": "json",
        # a dict, not a bare string: a string would name the split "train"
        "dataset_kwargs": {"data_files": {"test": str(data_file.resolve())}},
        "test_split": "test",
        "num_fewshot": 0,
    }
    kind = task.spec.kind
    if kind == "multiple_choice":
        metrics = ["acc", "acc_norm"]
        base |= {
            "output_type": "multiple_choice",
            "doc_to_text": "context",
            "doc_to_choice": "choices",
            "doc_to_target": "label",
            "target_delimiter": " ",
        }
    elif kind == "perplexity":
        metrics = ["word_perplexity", "byte_perplexity", "bits_per_byte"]
        base |= {"output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "text"}
    else:
        metrics = ["exact_match"]
        gen = {"until": list(task.spec.stop), "do_sample": False, "max_gen_toks": task.spec.max_gen_toks}
        base |= {
            "output_type": "generate_until",
            "doc_to_text": "prompt",
            "doc_to_target": "answer",
            "generation_kwargs": gen,
        }
    higher = {"acc": True, "acc_norm": True, "exact_match": True}
    agg = {"word_perplexity": "weighted_perplexity", "byte_perplexity": "weighted_perplexity"}
    base["metric_list"] = [
        {
            "metric": m,
            "aggregation": agg.get(m, "bits_per_byte" if m == "bits_per_byte" else "mean"),
            "higher_is_better": higher.get(m, False),
        }
        for m in metrics
    ]
    return base


def export_tasks(tasks: list[LoadedTask], out_dir: str | Path) -> list[Path]:
    """Write `<task>.jsonl` + `<task>.yaml` per task, for `lm_eval --include_path OUT_DIR --tasks spear_<task>`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for task in tasks:
        data = write_items(task, out / f"{task.name}.jsonl")
        path = out / f"{task.name}.yaml"
        path.write_text(yaml.safe_dump(task_dict(task, data), sort_keys=False, allow_unicode=True), encoding="utf-8")
        paths.append(path)
    return paths


def _import_lm_eval() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise SpearError("--backend lm-eval needs lm-evaluation-harness: pip install 'spear-mm[lm-eval]'") from exc
    quiet_lm_eval()
    return lm_eval, HFLM, TaskManager


def _git_hash_quietly() -> str | None:
    """lm-eval's `git describe` of the working folder, without git's `fatal: not a git repository` on stderr."""
    try:
        out = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def quiet_lm_eval() -> None:
    """One line per warning, no git noise: huggingface_hub and datasets log through a handler of their own and
    also propagate to the root handler (every retry warning twice); lm-eval asks git about the working folder."""
    import lm_eval.evaluator

    for name in ("huggingface_hub", "datasets"):
        logger = logging.getLogger(name)
        if logger.handlers and logging.getLogger().handlers:
            logger.propagate = False
    lm_eval.evaluator.get_git_commit_hash = _git_hash_quietly


def run_lm_eval(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[LoadedTask],
    device: str = "cpu",
    batch_size: int = 16,
    max_length: int | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, TaskResult]:
    """Evaluate loaded tasks with lm-eval's HF back end on the in-memory model; one `TaskResult` per task."""
    lm_eval, HFLM, TaskManager = _import_lm_eval()
    max_length = max_length or model_max_length(model)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length, device=device)
    counter = BuiltinScorer(model, tokenizer, torch.device(device), max_length=max_length)  # token accounting only
    manager = TaskManager(include_defaults=False)
    results: dict[str, TaskResult] = {}
    with scratch_dir(SCRATCH_PREFIX) as tmp:  # a killed run's folder is removed by the next one
        for task in tasks:
            label = f"lm-eval · {task.name}"
            if progress:
                progress(ProgressEvent("items", 0, len(task.items), label))
            config = task_dict(task, write_items(task, Path(tmp) / f"{task.name}.jsonl"))
            start = time.perf_counter()
            out = lm_eval.simple_evaluate(
                model=lm,
                tasks=[config],
                task_manager=manager,
                log_samples=True,
                bootstrap_iters=0,
                random_seed=0,
                numpy_random_seed=0,
                torch_random_seed=0,
                fewshot_random_seed=0,
            )
            seconds = time.perf_counter() - start
            samples = sorted(out["samples"][lm_eval_name(task)], key=lambda s: s["doc_id"])
            if len(samples) != len(task.items):
                raise SpearError(f"lm-eval returned {len(samples)} samples for {task.name}, expected {len(task.items)}")
            results[task.name] = _to_result(task, samples, seconds, counter)
            results[task.name].source = f"{task.source} (lm-eval {getattr(lm_eval, '__version__', '?')})"
            if progress:
                progress(ProgressEvent("items", len(task.items), len(task.items), label))
    return results


def _to_result(task: LoadedTask, samples: list[dict[str, Any]], seconds: float, counter: BuiltinScorer) -> TaskResult:
    kind = task.spec.kind
    if kind == "multiple_choice":
        lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
        items = [i for i in task.items if isinstance(i, MCItem)]
        ctx, conts = counter.encode_pairs([i.context for i in items], [i.choices for i in items])
        tokens = sum(len(c) * len(cs) + sum(map(len, cs)) for c, cs in zip(ctx, conts, strict=True))
        return aggregate.mc_result(task, lls, seconds, tokens)
    if kind == "perplexity":
        nll = [-float(_scalar(s["filtered_resps"])) for s in samples]
        n_tokens = [len(t) for t in counter.encode([i.text for i in task.items if isinstance(i, TextItem)])]
        return aggregate.ppl_result(task, nll, n_tokens, seconds)
    outputs = [str(_scalar(s["filtered_resps"])) for s in samples]
    prompts = [i.prompt for i in task.items if isinstance(i, GenItem)]
    generated = sum(map(len, counter.encode(outputs, special=False)))
    return aggregate.gen_result(task, outputs, seconds, sum(map(len, counter.encode(prompts))) + generated)


def _scalar(value: Any) -> Any:
    while isinstance(value, (list, tuple)):
        value = value[0]
    return value

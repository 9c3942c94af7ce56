"""`evaluate`: one model (a folder or an in-memory model) on tasks or suites, with either back end."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from spear_mm.errors import SpearError
from spear_mm.evaluation import aggregate
from spear_mm.evaluation.builtin import Advance, BuiltinScorer
from spear_mm.evaluation.lm_eval_backend import run_lm_eval
from spear_mm.evaluation.lm_eval_tasks import check_no_clash, preflight, run_registered
from spear_mm.evaluation.metrics import EvalResult, TaskResult
from spear_mm.evaluation.suites import load_tasks
from spear_mm.evaluation.tasks import GenItem, LoadedTask, MCItem, TextItem
from spear_mm.io.checkpoint import Checkpoint, read_config
from spear_mm.io.hub import resolve_model
from spear_mm.progress import ProgressCallback, ProgressEvent

log = logging.getLogger(__name__)

BACKENDS = ("builtin", "lm-eval")
_TRANSFORMERS = tuple(int(x) for x in transformers.__version__.split(".")[:2])


def load_model(path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None):
    """A causal LM and its tokenizer from a HF folder (float32 on CPU unless `dtype` says otherwise)."""

    path = resolve_model(path)
    if not (path / "config.json").is_file():
        raise SpearError(f"model folder {path} has no config.json: expected a Hugging Face model folder")
    # the checks merge and analyze make, before transformers sees the folder: a config that is a JSON object, a
    # weights-only .bin, no overlapping tensors, one unambiguous weight set (transformers' choice = spear-mm's);
    # a folder without weights is left to transformers (e.g. a custom-code model: its message says why)
    if any(next(path.glob(p), None) for p in ("*.safetensors", "*.bin", "*.index.json")):
        Checkpoint.open(path)
    else:
        read_config(path / "config.json")
    dtype = dtype or (torch.float32 if device == "cpu" else "auto")
    key = "dtype" if _TRANSFORMERS >= (4, 56) else "torch_dtype"  # renamed in transformers 4.56
    try:
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False, **{key: dtype})
    except (OSError, ValueError, KeyError) as exc:
        raise SpearError(
            f"model folder {path}: transformers cannot build this model without running code from the folder "
            f"or hub ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}). spear-mm never runs remote code "
            "(auto_map); convert the model to an architecture transformers ships, or evaluate it with your own tool."
        ) from None
    model = model.to(device).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise SpearError(f"model folder {path}: no usable tokenizer ({exc})") from None
    return model, tokenizer


def tokenizer_fingerprint(tok: PreTrainedTokenizerBase) -> str:
    """Class, size and a hash of the vocabulary: models with different fingerprints are not token-comparable."""
    vocab = sorted(tok.get_vocab().items())
    digest = hashlib.sha1(repr(vocab).encode("utf-8")).hexdigest()[:12]
    return f"{type(tok).__name__}:{len(tok)}:{digest}"


@contextlib.contextmanager
def prepared(model: PreTrainedModel, device: str, dtype: torch.dtype | None, threads: int | None) -> Iterator[None]:
    """Eval mode, the compute dtype (float32 on CPU: no bf16 units there) and thread count for the duration;
    the caller's model gets its dtype and training flag back afterwards (bf16 -> fp32 -> bf16 is exact)."""
    old_dtype, was_training, old_threads = model.dtype, model.training, torch.get_num_threads()
    target = dtype or (torch.float32 if device == "cpu" else old_dtype)
    if threads:
        torch.set_num_threads(threads)
    if target != old_dtype:
        log.info("evaluating in %s (model is %s)", target, old_dtype)
        model.to(target)
    model.eval()
    try:
        yield
    finally:
        if target != old_dtype:
            model.to(old_dtype)
        model.train(was_training)
        torch.set_num_threads(old_threads)


def run_builtin(engine: BuiltinScorer, task: LoadedTask, advance: Advance) -> TaskResult:
    """Score one loaded task with the built-in engine."""
    start, fwd0 = time.perf_counter(), engine.forward_tokens
    spec, items = task.spec, list(task.items)
    if spec.kind == "multiple_choice":
        mc = [i for i in items if isinstance(i, MCItem)]
        ctx, conts = engine.encode_pairs([i.context for i in mc], [i.choices for i in mc])
        lls = engine.loglikelihoods(ctx, conts, advance)
        tokens = sum(len(c) * len(cs) + sum(map(len, cs)) for c, cs in zip(ctx, conts, strict=True))
    elif spec.kind == "perplexity":
        docs = engine.encode([i.text for i in items if isinstance(i, TextItem)], special=False)
        window = spec.window or engine.max_length
        nll = engine.rolling_nll(docs, window, spec.stride or window, advance)
    else:
        prompts = [i.prompt for i in items if isinstance(i, GenItem)]
        outputs, generated = engine.generate(prompts, spec.max_gen_toks, spec.stop, advance)
        tokens = sum(map(len, engine.encode(prompts))) + generated
    seconds, fwd = time.perf_counter() - start, engine.forward_tokens - fwd0
    if spec.kind == "multiple_choice":
        return aggregate.mc_result(task, lls, seconds, tokens, forward_tokens=fwd)
    if spec.kind == "perplexity":
        return aggregate.ppl_result(task, nll, [len(d) for d in docs], seconds, forward_tokens=fwd)
    return aggregate.gen_result(task, outputs, seconds, tokens, forward_tokens=fwd)


def evaluate(
    model: str | Path | PreTrainedModel,
    tasks: Any,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    data_dir: str | Path | None = None,
    device: str = "cpu",
    limit: int | None = None,
    batch_size: int = 16,
    threads: int | None = None,
    seed: int = 0,
    backend: str = "builtin",
    dtype: torch.dtype | None = None,
    max_length: int | None = None,
    name: str | None = None,
    skip_missing: bool = False,
    progress: ProgressCallback | None = None,
    lm_eval_tasks: Any | None = None,
) -> EvalResult:
    """Evaluate `model` on `tasks`.

    Args:
        model: a HF folder or hub id, or an in-memory `PreTrainedModel` (then pass its `tokenizer`).
        tasks: 'general', 'domain', 'general,domain', a suite YAML path, `TaskSpec`s / dicts, or already
            loaded `LoadedTask`s (load once with `load_tasks`, then evaluate many models on the same items).
        limit, seed: N items per task, sampled with `seed`, stratified by label. Deterministic.
        backend: 'builtin' or 'lm-eval' (the same items scored by lm-eval).
        progress: gets `items` `ProgressEvent`s (items done of each task, labelled `<model> · <task>`).
        lm_eval_tasks: an `LmEvalTasks` of lm-eval registered task names, run by lm-eval itself in addition to
            `tasks` (which may then be empty); their datasets are checked before the model is loaded.
    Returns:
        An `EvalResult` with every task's score, standard error and per-item records.

    Example:
        >>> evaluate("merged/", "general,domain", data_dir="data/", limit=200).tasks["arc_easy"].score  # doctest: +SKIP
    """
    if backend not in BACKENDS:
        raise SpearError(f"unknown back end {backend!r}: use one of {BACKENDS}")
    model_path = None
    if lm_eval_tasks is not None:
        preflight(lm_eval_tasks)  # a dataset missing offline fails here, before any model work
    if isinstance(model, (str, Path)):
        model = resolve_model(model)
        model_path = str(Path(model).expanduser().resolve())
        model, loaded_tok = load_model(model, device, dtype)
        tokenizer = tokenizer or loaded_tok
    if tokenizer is None:
        raise SpearError("evaluate: an in-memory model needs its tokenizer (tokenizer=...)")
    skipped: dict[str, str] = {}
    loaded = _load(tasks, data_dir, limit, seed, skip_missing, skipped) if tasks else []
    if lm_eval_tasks is not None:
        check_no_clash(lm_eval_tasks, loaded)
    label = name or (Path(model_path).name if model_path else getattr(model.config, "_name_or_path", "") or "model")
    result = EvalResult(
        model=label,
        model_path=model_path,
        backend=backend,
        device=device,
        limit=limit,
        seed=seed,
        tokenizer=tokenizer_fingerprint(tokenizer),
        n_params=sum(p.numel() for p in model.parameters()),
        skipped=skipped,
    )
    start = time.perf_counter()
    torch.manual_seed(seed)
    with prepared(model, device, dtype, threads):
        result.dtype = str(model.dtype).removeprefix("torch.")
        if backend == "lm-eval":
            result.tasks = run_lm_eval(
                model, tokenizer, loaded, device=device, batch_size=batch_size, max_length=max_length, progress=progress
            )
        else:
            engine = BuiltinScorer(model, tokenizer, torch.device(device), batch_size=batch_size, max_length=max_length)
            for task in loaded:
                result.tasks[task.name] = _with_progress(
                    progress, f"{label} · {task.name}", task, lambda adv, t=task: run_builtin(engine, t, adv)
                )
                log.info(
                    "%s %s: %s = %.4f (n=%d)",
                    label,
                    task.name,
                    result.tasks[task.name].metric,
                    result.tasks[task.name].score,
                    len(task.items),
                )
        if lm_eval_tasks is not None:
            result.tasks.update(
                run_registered(
                    model,
                    tokenizer,
                    lm_eval_tasks,
                    device=device,
                    batch_size=batch_size,
                    max_length=max_length,
                    limit=limit,
                    seed=seed,
                    progress=progress,
                )
            )
    result.seconds = time.perf_counter() - start
    return result


def _load(
    tasks: Any, data_dir: str | Path | None, limit: int | None, seed: int, skip: bool, skipped: dict[str, str]
) -> list[LoadedTask]:
    if isinstance(tasks, Sequence) and not isinstance(tasks, str) and tasks and isinstance(tasks[0], LoadedTask):
        return list(tasks)
    if isinstance(tasks, LoadedTask):
        return [tasks]
    return load_tasks(tasks, data_dir, limit, seed, skip_missing=skip, skipped=skipped)


def _with_progress(
    progress: ProgressCallback | None, label: str, task: LoadedTask, fn: Callable[[Advance], TaskResult]
) -> TaskResult:
    """Run `fn(advance)`, turning its item counts into `items` events: 0 at the start, `total` at the end."""
    if progress is None:
        return fn(lambda _n: None)
    total, done = len(task.items), 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        progress(ProgressEvent("items", min(done, total), total, label))

    progress(ProgressEvent("items", 0, total, label))
    result = fn(advance)
    if done != total:
        progress(ProgressEvent("items", total, total, label))
    return result


def evaluate_many(
    models: Sequence[str | Path],
    tasks: Any,
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    skip_missing: bool = False,
    **kwargs: Any,
) -> list[EvalResult]:
    """Evaluate several model folders on the same items (tasks are loaded and sampled once)."""
    loaded = load_tasks(tasks, data_dir, limit, seed, skip_missing=skip_missing)
    return [evaluate(m, loaded, limit=limit, seed=seed, **kwargs) for m in models]

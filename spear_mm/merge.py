"""Step 4 of SPEAR-MM: stream the base/adapted pair tensor by tensor, merge where the plan says, write a
normal Hugging Face model folder (atomically), and report per-tensor statistics.

Memory is bounded by a few tensors in flight (reused buffers; large tensors stream in chunks), never two
whole models. Reading, computing and writing overlap in three threads (file I/O and torch kernels release
the GIL); the loop itself is in streaming.py, the math in kernels.py.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import shutil
import sys
import time
import types
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from pydantic import BaseModel

from spear_mm import __version__
from spear_mm.buffers import Held
from spear_mm.checkpoint import Checkpoint, Pair, open_pair
from spear_mm.dtypes import dtype_label, parse_dtype
from spear_mm.errors import SpearError
from spear_mm.hub import hub_label
from spear_mm.plan import Plan
from spear_mm.streaming import PREFETCH, TensorStat, TensorTask, produce, workspace_for
from spear_mm.writer import AtomicDir, ShardedWriter, check_free_space, check_output, parse_size

log = logging.getLogger(__name__)

_WEIGHT_PATTERNS = (
    "*.safetensors",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.index.json",
    "*.gguf",
    "*.msgpack",
    "*.h5",
    "README.md",
    "merge_report.json",
    "plan.yaml",
)
# Files that describe the adapted model's training run (spear-mm cpt, HF Trainer): the merge never had it.
_TRAINING_FILES = ("cost.json", "train_log.jsonl", "trainer_state.json", "training_args.bin", "all_results.json")
Progress = Callable[[str, int], None]
DEFAULT_THREADS = 1  # torch intra-op threads during a merge; measured in bench/merge_bench.py (docs/performance.md)


class MergeReport(BaseModel):
    base: str
    adapted: str
    base_fingerprint: str
    adapted_fingerprint: str
    output: str | None
    plan_summary: str
    method: str
    device: str
    threads: int
    seconds: float
    bytes_written: int
    n_tensors: int
    n_merged: int
    n_lerp_fallback: int
    notes: list[str] = []
    out_dtype: str | None = None  # --out-dtype; None: each tensor in the adapted model's dtype
    base_hub: str | None = None  # 'org/name@<commit>' when the model came from the Hugging Face hub cache
    adapted_hub: str | None = None
    tensors: list[TensorStat]
    spear_mm_version: str = __version__


def build_tasks(pair: Pair, plan: Plan, out_dtype: torch.dtype | None = None) -> list[TensorTask]:
    """Resolve the plan to one action per tensor (the `--dry-run` view). `out_dtype` (default: each tensor's
    dtype in the adapted model) is the dtype floating-point tensors are written in."""
    if plan.num_layers != pair.num_layers:
        raise SpearError(
            f"the plan is for {plan.num_layers} layers but the model has {pair.num_layers}; "
            "make the plan from this pair's scores (spear-mm plan)."
        )
    tasks = []
    for name, p in pair.params.items():
        a, b = pair.adapted.infos[name], pair.base.infos[name]
        t = plan.t_for(p)
        ext = pair.vocab_extension.get(name)
        trimmed = plan.method == "ties" and plan.density < 1
        if not a.dtype.is_floating_point:
            action, t = "keep", 0.0  # integer buffers are copied from the adapted model
        elif t == 0.0 and not trimmed:
            action = "keep"
        elif t == 1.0 and a.dtype == b.dtype and ext is None:
            action = "base"
        else:
            action = "merge"
        dtype = out_dtype if out_dtype is not None and a.dtype.is_floating_point else a.dtype
        tasks.append(TensorTask(p, action, t, dtype, a.shape, ext[0] if ext else None))
    return tasks


def iter_merged(
    pair: Pair, plan: Plan, *, device: str = "cpu", prefetch: int = 2, tasks: list[TensorTask] | None = None
) -> Iterator[tuple[TensorTask, torch.Tensor, TensorStat]]:
    """Yield (task, merged tensor on CPU, stats) for every tensor, reading ahead in a background thread.

    The tensors are the caller's to keep (fresh memory); `merge` streams through reused buffers instead.
    """
    tasks = tasks if tasks is not None else build_tasks(pair, plan)
    ws = workspace_for(pair, plan, tasks, resolve_device(device), pooled=False)
    for task, tensor, stat, _ in produce(pair, plan, tasks, ws, prefetch):
        yield task, tensor, stat


def resolve_device(device: str) -> torch.device:
    """A torch device for the kernels; a clear error when CUDA is asked for but torch sees no GPU."""
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise SpearError(f"--device {device!r} is not a torch device; use cpu, cuda or cuda:N.") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SpearError(
                f"--device {device} was requested but torch sees no CUDA GPU (torch {torch.__version__}); "
                "use --device cpu, or install a CUDA build of torch on a machine with a GPU."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SpearError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible.")
    elif dev.type != "cpu":
        raise SpearError(f"--device {device}: spear-mm merges on cpu or cuda.")
    return dev


def merge(
    base: str | Path | Checkpoint,
    adapted: str | Path | Checkpoint,
    out: str | Path,
    plan: Plan | float,
    *,
    device: str = "cpu",
    max_shard_size: str | int = "5GB",
    force: bool = False,
    allow_vocab_extension: bool = False,
    threads: int | None = None,
    progress: Progress | None = None,
    out_dtype: str | torch.dtype | None = None,
) -> MergeReport:
    """Merge `adapted` toward `base` following `plan` (or a uniform t for every layer) into an HF folder at `out`.

    `base`/`adapted` are model folders or opened `Checkpoint`s; `threads` sets torch's intra-op threads for
    the call (default `DEFAULT_THREADS`, see docs/performance.md); `progress(name, nbytes)` is called per
    tensor written; `out_dtype` ('bf16', 'fp16', 'fp32' or a torch dtype; default: the adapted model's dtype)
    is the dtype the floating-point tensors are written in. Returns the `MergeReport` that is also written as
    `merge_report.json`.
    """
    started = time.perf_counter()
    resolve_device(device)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or DEFAULT_THREADS)
    try:
        dtype = parse_dtype(out_dtype)
        return _merge(
            base, adapted, out, plan, device, max_shard_size, force, allow_vocab_extension, progress, started, dtype
        )
    finally:
        torch.set_num_threads(previous_threads)


def _merge(
    base: str | Path | Checkpoint,
    adapted: str | Path | Checkpoint,
    out: str | Path,
    plan: Plan | float,
    device: str,
    max_shard_size: str | int,
    force: bool,
    allow_vocab_extension: bool,
    progress: Progress | None,
    started: float,
    out_dtype: torch.dtype | None = None,
) -> MergeReport:
    pair = open_pair(base, adapted, allow_vocab_extension=allow_vocab_extension)
    plan = plan if isinstance(plan, Plan) else Plan.uniform(float(plan), pair.num_layers)
    final = check_output(Path(out), [pair.base.path, pair.adapted.path], force)
    tasks = build_tasks(pair, plan, out_dtype)
    check_free_space(final.parent, sum(t.out_dtype.itemsize * _numel(t.shape) for t in tasks))
    with AtomicDir(final) as staging:
        writer = ShardedWriter(staging.tmp, [(t.name, t.out_dtype, t.shape) for t in tasks], parse_size(max_shard_size))
        try:
            stats = _stream(pair, plan, tasks, writer, device, progress)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        report = MergeReport(
            base=str(pair.base.path),
            adapted=str(pair.adapted.path),
            base_fingerprint=pair.base.fingerprint(),
            adapted_fingerprint=pair.adapted.fingerprint(),
            output=str(final),
            plan_summary=plan.summary(),
            method=plan.method,
            device=device,
            threads=torch.get_num_threads(),
            seconds=round(time.perf_counter() - started, 3),
            bytes_written=writer.total_size,
            n_tensors=len(stats),
            n_merged=sum(s.action == "merge" for s in stats),
            n_lerp_fallback=sum(s.lerp_fallback for s in stats),
            notes=_notes(pair, out_dtype),
            tensors=stats,
            out_dtype=None if out_dtype is None else dtype_label(out_dtype),
            base_hub=hub_label(pair.base.path),
            adapted_hub=hub_label(pair.adapted.path),
        )
        _finish_folder(staging.tmp, pair, plan, report)
        staging.commit()
    log.info(
        "merged %d tensors (%d interpolated, %d LERP fallbacks) into %s in %.1f s",
        report.n_tensors,
        report.n_merged,
        report.n_lerp_fallback,
        final,
        report.seconds,
    )
    return report


def _stream(
    pair: Pair, plan: Plan, tasks: list[TensorTask], writer: ShardedWriter, device: str, progress: Progress | None
) -> list[TensorStat]:
    """Merge in this thread while one thread reads ahead and another writes (at most 2 writes queued)."""
    stats: list[TensorStat] = []
    ws = workspace_for(pair, plan, tasks, resolve_device(device), pooled=True)
    with ThreadPoolExecutor(1, thread_name_prefix="spear-write") as wpool:
        writes: deque[tuple[str, Future, Held]] = deque()

        def drain(keep: int) -> None:
            while len(writes) > keep or (writes and writes[0][1].done()):
                name, fut, held = writes.popleft()
                try:
                    nbytes = fut.result()
                finally:
                    ws.release(held)
                if progress:
                    progress(name, nbytes)

        def sink(name: str, start: int, chunk: torch.Tensor) -> None:
            writer.write_range(name, start, chunk)

        for task, tensor, stat, held in produce(pair, plan, tasks, ws, PREFETCH, sink):
            stats.append(stat)
            if tensor is None:  # streamed in chunks, already written
                ws.release(held)
                if progress:
                    progress(task.name, math.prod(task.shape) * task.out_dtype.itemsize)
                continue
            writes.append((task.name, wpool.submit(writer.write, task.name, tensor), held))
            drain(2)
        drain(0)
    return stats


def _notes(pair: Pair, out_dtype: torch.dtype | None = None) -> list[str]:
    """What the user should know about how this pair was merged (also shown in the model card)."""
    notes = []
    written = dtype_label(out_dtype) if out_dtype else "the adapted model's dtype"
    if pair.dtype_mismatch:
        name, (db, da) = next(iter(pair.dtype_mismatch.items()))
        notes.append(
            f"{len(pair.dtype_mismatch)} tensor(s) differ in dtype between base and adapted (e.g. '{name}': "
            f"{str(db).removeprefix('torch.')} vs {str(da).removeprefix('torch.')}); they were merged in float32 "
            f"and written in {written}."
        )
    for name, (rb, ra) in pair.vocab_extension.items():
        notes.append(f"'{name}': vocabulary extension {rb} -> {ra} rows; rows {rb}.. kept from the adapted model.")
    return notes


def merge_into_model(pair: Pair, plan: Plan, model: torch.nn.Module, *, device: str = "cpu") -> list[TensorStat]:
    """Load the merged weights straight into an instantiated model (no disk), e.g. to evaluate a candidate."""
    params = dict(model.state_dict(keep_vars=True))
    stats = []
    with torch.no_grad():
        for task, tensor, stat in iter_merged(pair, plan, device=device):
            if task.name not in params:
                raise SpearError(f"the model has no parameter '{task.name}'; build it from the adapted config.")
            params[task.name].copy_(tensor)
            stats.append(stat)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return stats


def _finish_folder(folder: Path, pair: Pair, plan: Plan, report: MergeReport) -> None:
    """Copy config/tokenizer/generation files from the adapted model; write plan, report and model card."""
    for src in sorted(pair.adapted.path.iterdir()):
        if src.is_file() and src.name not in _TRAINING_FILES and not any(src.match(p) for p in _WEIGHT_PATTERNS):
            shutil.copy2(src, folder / src.name)
    if report.out_dtype is not None:
        _set_config_dtype(folder / "config.json", report.out_dtype)
    plan.save(folder / "plan.yaml")
    (folder / "merge_report.json").write_text(report.model_dump_json(indent=1))
    (folder / "README.md").write_text(model_card(pair, plan, report))


def _set_config_dtype(config: Path, dtype: str) -> None:
    """Record the written dtype in config.json: the key(s) the adapted config has (`dtype` since transformers
    4.56, `torch_dtype` before), both when it has neither."""
    if not config.is_file():
        return
    data = json.loads(config.read_text())
    keys = [k for k in ("dtype", "torch_dtype") if k in data] or ["dtype", "torch_dtype"]
    for key in keys:
        data[key] = dtype
    config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def model_card(pair: Pair, plan: Plan, report: MergeReport) -> str:
    restored = plan.restored_layers()
    rows = "\n".join(f"| {i} | {plan.layer_t(i):g} |" for i in restored) or "| – | – |"
    fallback = f"{report.n_lerp_fallback} of {report.n_merged}" if report.n_merged else "0"
    notes = "".join(f"\nNote: {n}\n" for n in report.notes)
    return f"""---
tags: [spear-mm, merge, slerp]
base_model: {(hub_label(pair.base.path) or "").split("@")[0] or pair.base.path.name}
---
# {Path(report.output or "merged").name}

Merged with spear-mm {__version__} (SPEAR-MM: selective parameter evaluation and restoration via model
merging). Layers of the adapted model were moved back toward the base model by
{plan.method.upper()}; **t is the weight of the base** (0 = adapted weights kept, 1 = base restored).

| input | path | content hash (sampled) |
| --- | --- | --- |
| base | {_where(pair.base.path, report.base_hub)} | `{report.base_fingerprint}` |
| adapted | {_where(pair.adapted.path, report.adapted_hub)} | `{report.adapted_fingerprint}` |

Written in {report.out_dtype or "the adapted model's dtype"}. The adapted model's training records (`cost.json`,
`train_log.jsonl`) are left out: this folder's provenance is `plan.yaml`, `merge_report.json` and this card.

Plan: {plan.summary()} (policy `{plan.provenance.policy}`, scores `{plan.provenance.scores_hash or "–"}`).
Full plan in `plan.yaml`, per-tensor statistics in `merge_report.json`. SLERP fell back to LERP (|cos| > 0.9995)
on {fallback} interpolated tensors.
{notes}

| restored layer | t |
| --- | --- |
{rows}
"""


def _where(path: Path, hub: str | None) -> str:
    return f"hub `{hub}` (`{path}`)" if hub else f"`{path}`"


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class _CallableModule(types.ModuleType):
    """`from spear_mm import merge` may bind this module (a submodule shadows the lazy attribute): call `merge`."""

    def __call__(self, *args, **kwargs) -> MergeReport:
        return merge(*args, **kwargs)


__signature__ = inspect.signature(merge)
sys.modules[__name__].__class__ = _CallableModule

"""Step 4 of SPEAR-MM: stream the base/adapted pair tensor by tensor, merge where the plan says, write a
normal Hugging Face model folder (atomically), and report per-tensor statistics.

Memory is bounded by a few tensors in flight (reused buffers; large tensors stream in chunks), never two
whole models. Reading, computing and writing overlap in three threads (file I/O and torch kernels release
the GIL); the loop itself is in streaming.py, the math in kernels.py.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from spear_mm.errors import SpearError
from spear_mm.io.checkpoint import Checkpoint
from spear_mm.io.devices import resolve_device
from spear_mm.io.dtypes import dtype_label, parse_dtype
from spear_mm.io.hub import hub_label
from spear_mm.io.outputs import AtomicDir, check_free_space, check_output
from spear_mm.io.pair import Pair, open_pair
from spear_mm.io.writer import ShardedWriter, parse_size
from spear_mm.merging.buffers import Held
from spear_mm.merging.folder import TRAINING_FILES, MergeReport, model_card, set_config_dtype, side_files
from spear_mm.merging.methods import METHODS
from spear_mm.merging.streaming import PREFETCH, TensorOp, TensorStat, produce, workspace_for
from spear_mm.planning.plan import Plan
from spear_mm.progress import ProgressCallback, ProgressEvent

log = logging.getLogger(__name__)

DEFAULT_THREADS = 1  # torch intra-op threads during a merge; measured in bench/merge_bench.py (docs/performance.md)


def build_ops(pair: Pair, plan: Plan, out_dtype: torch.dtype | None = None) -> list[TensorOp]:
    """Resolve the plan to one action per tensor (the `--dry-run` view). `out_dtype` (default: each tensor's
    dtype in the adapted model) is the dtype floating-point tensors are written in."""
    if plan.num_layers != pair.num_layers:
        raise SpearError(
            f"the plan is for {plan.num_layers} layers but the model has {pair.num_layers}; "
            "make the plan from this pair's scores (spear-mm plan)."
        )
    check_module_names(plan, {p.module for p in pair.params.values() if p.group == "layer"})
    ops = []
    for name, p in pair.params.items():
        a, b = pair.adapted.infos[name], pair.base.infos[name]
        t = plan.t_for(p)
        ext = pair.vocab_extension.get(name)
        method = plan.method_for(p)
        trimmed = METHODS[method].changes_at_zero(plan)
        if not a.dtype.is_floating_point:  # integers cannot be interpolated: t = 1 copies the base, else adapted
            action, t = ("base", 1.0) if t == 1.0 and a.dtype == b.dtype and a.shape == b.shape else ("keep", 0.0)
        elif t == 0.0 and not trimmed:
            action = "keep"
        elif t == 1.0 and a.dtype == b.dtype and ext is None:
            action = "base"
        else:
            action = "merge"
        dtype = out_dtype if out_dtype is not None and a.dtype.is_floating_point else a.dtype
        ops.append(TensorOp(p, action, t, dtype, a.shape, ext[0] if ext else None, method))
    return ops


def check_module_names(plan: Plan, valid: set[str]) -> None:
    """Refuse per-module overrides that match no module of this model (they would silently restore nothing)."""
    for rule in plan.layers:
        unknown = sorted(set(rule.modules) - valid)
        if unknown:
            raise SpearError(
                f"the plan overrides module(s) {unknown} in layer {rule.layer}, but this model has no such module; "
                f"valid module names: {', '.join(sorted(valid))}. Fix the plan's `modules:` keys."
            )


def iter_merged(
    pair: Pair, plan: Plan, *, device: str = "cpu", prefetch: int = 2, ops: list[TensorOp] | None = None
) -> Iterator[tuple[TensorOp, torch.Tensor, TensorStat]]:
    """Yield (op, merged tensor on CPU, stats) for every tensor, reading ahead in a background thread.

    The tensors are the caller's to keep (fresh memory); `merge` streams through reused buffers instead.
    """
    ops = ops if ops is not None else build_ops(pair, plan)
    ws = workspace_for(pair, plan, ops, resolve_device(device), pooled=False)
    for op, tensor, stat, _ in produce(pair, plan, ops, ws, prefetch):
        yield op, tensor, stat


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
    progress: ProgressCallback | None = None,
    out_dtype: str | torch.dtype | None = None,
    statistics: str | Path | None = None,
    inputs: tuple[str | Path, ...] = (),
) -> MergeReport:
    """Merge `adapted` toward `base` following `plan` into a Hugging Face folder at `out` (streamed, atomic).

    Args:
        base, adapted: model folders, hub ids or opened `Checkpoint`s.
        out: the output folder (refused if it overlaps an input; replaced only with `force`).
        plan: a `Plan`, or a float t applied to every layer.
        force: replace an existing output; also merge a plan made for another pair (with a warning).
        threads: torch intra-op threads for the call (default `DEFAULT_THREADS`, see docs/performance.md).
        progress: gets a `merge` `ProgressEvent` per tensor written (bytes written of the total; label: its name).
        out_dtype: 'bf16', 'fp16', 'fp32' or a torch dtype (default: the adapted model's dtype).
        statistics: the folder of `spear-mm stats` that `regmean`/`fisher` plans read (overrides the plan's).
        inputs: other files the caller read (the plan file): `out` must not overlap them either.
    Returns:
        The `MergeReport` (also written as `merge_report.json`).

    Example:
        >>> merge("base/", "adapted/", "merged/", Plan.load("plan.yaml"))  # doctest: +SKIP
    """
    started = time.perf_counter()
    resolve_device(device)
    dtype = parse_dtype(out_dtype)
    pair = open_pair(base, adapted, allow_vocab_extension=allow_vocab_extension)
    plan = plan if isinstance(plan, Plan) else Plan.uniform(float(plan), pair.num_layers)
    if statistics is not None:
        plan = plan.model_copy(update={"statistics": str(statistics)})
    check_provenance(plan, pair, force=force)
    inputs = [pair.base.path, pair.adapted.path, *([Path(plan.statistics)] if plan.statistics else []), *inputs]
    final = check_output(Path(out), inputs, force)
    ops = build_ops(pair, plan, dtype)
    sides, skipped_links = side_files(pair.adapted.path)
    check_free_space(final.parent, _bytes_to_write(ops, sides))
    job = _Job(
        pair,
        plan,
        ops,
        final,
        inputs,
        sides,
        skipped_links,
        device,
        parse_size(max_shard_size),
        force,
        dtype,
        progress,
        started,
    )
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or DEFAULT_THREADS)
    try:
        report = _write(job)
    finally:
        torch.set_num_threads(previous_threads)
    log.info(
        "merged %d tensors (%d interpolated, %d LERP fallbacks) into %s in %.1f s",
        report.n_tensors,
        report.n_merged,
        report.n_lerp_fallback,
        final,
        report.seconds,
    )
    return report


@dataclass(frozen=True)
class _Job:
    """One checked merge: what to write where, and how."""

    pair: Pair
    plan: Plan
    ops: list[TensorOp]
    final: Path
    inputs: list[Path]
    sides: list[Path]
    skipped_links: list[str]
    device: str
    max_shard_size: int
    force: bool
    out_dtype: torch.dtype | None
    progress: ProgressCallback | None
    started: float


def _write(job: _Job) -> MergeReport:
    """Stream the merge into a temporary folder, add the side files, report and card, then commit it."""
    pair, plan, ops = job.pair, job.plan, job.ops
    with AtomicDir(job.final, job.inputs, job.force) as staging:
        writer = ShardedWriter(staging.tmp, [(t.name, t.out_dtype, t.shape) for t in ops], job.max_shard_size)
        try:
            stats = _stream(pair, plan, ops, writer, job.device, job.progress)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        report = MergeReport(
            base=str(pair.base.path),
            adapted=str(pair.adapted.path),
            base_fingerprint=pair.base.fingerprint(),
            adapted_fingerprint=pair.adapted.fingerprint(),
            output=str(job.final),
            plan_summary=plan.summary(),
            method=plan.method,
            device=job.device,
            threads=torch.get_num_threads(),
            seconds=round(time.perf_counter() - job.started, 3),
            bytes_written=writer.total_size,
            n_tensors=len(stats),
            n_merged=sum(s.action == "merge" for s in stats),
            n_lerp_fallback=sum(s.lerp_fallback for s in stats),
            notes=_notes(pair, plan, ops, job.out_dtype) + job.skipped_links,
            tensors=stats,
            out_dtype=None if job.out_dtype is None else dtype_label(job.out_dtype),
            base_hub=hub_label(pair.base.path),
            adapted_hub=hub_label(pair.adapted.path),
        )
        _finish_folder(staging.tmp, job.sides, pair, plan, report)
        staging.commit()
    return report


def check_provenance(plan: Plan, pair: Pair, *, force: bool = False) -> None:
    """Refuse a plan made for another pair: its provenance fingerprints must match this pair's.

    Args:
        plan: the plan; one without recorded fingerprints (written by hand) passes.
        pair: the open base/adapted pair.
        force: merge anyway, with a warning.
    """
    recorded = {"base": (plan.provenance.base, pair.base), "adapted": (plan.provenance.adapted, pair.adapted)}
    wrong = [
        f"{k} {want} ≠ {ckpt.path} {got}"
        for k, (want, ckpt) in recorded.items()
        if want and (got := ckpt.fingerprint()) != want
    ]
    if not wrong:
        return
    msg = (
        f"the plan was made for another pair (its provenance fingerprints: {'; '.join(wrong)}): its scores "
        "and layer choices describe other weights"
    )
    if force:
        log.warning("%s; merging anyway (--force).", msg)
        return
    raise SpearError(f"{msg}. Re-make it from this pair (spear-mm analyze, then spear-mm plan), or pass --force.")


def _stream(
    pair: Pair, plan: Plan, ops: list[TensorOp], writer: ShardedWriter, device: str, progress: ProgressCallback | None
) -> list[TensorStat]:
    """Merge in this thread while one thread reads ahead and another writes (at most 2 writes queued)."""
    stats: list[TensorStat] = []
    total, written = sum(math.prod(x.shape) * x.out_dtype.itemsize for x in ops), 0

    def wrote(name: str, nbytes: int) -> None:
        nonlocal written
        written += nbytes
        if progress:
            progress(ProgressEvent("merge", written, total, name, unit="bytes"))

    ws = workspace_for(pair, plan, ops, resolve_device(device), pooled=True)
    with ThreadPoolExecutor(1, thread_name_prefix="spear-write") as wpool:
        writes: deque[tuple[str, Future, Held]] = deque()

        def drain(keep: int) -> None:
            while len(writes) > keep or (writes and writes[0][1].done()):
                name, fut, held = writes.popleft()
                try:
                    nbytes = fut.result()
                finally:
                    ws.release(held)
                wrote(name, nbytes)

        def sink(name: str, start: int, chunk: torch.Tensor) -> None:
            writer.write_range(name, start, chunk)

        for op, tensor, stat, held in produce(pair, plan, ops, ws, PREFETCH, sink):
            stats.append(stat)
            if tensor is None:  # streamed in chunks, already written
                ws.release(held)
                wrote(op.name, math.prod(op.shape) * op.out_dtype.itemsize)
                continue
            writes.append((op.name, wpool.submit(writer.write, op.name, tensor), held))
            drain(2)
        drain(0)
    return stats


def _notes(pair: Pair, plan: Plan, ops: list[TensorOp], out_dtype: torch.dtype | None = None) -> list[str]:
    """What the user should know about how this pair was merged (also shown in the model card)."""
    notes = []
    written = dtype_label(out_dtype) if out_dtype else "the adapted model's dtype"
    ints = [x.name for x in ops if not x.out_dtype.is_floating_point and x.action == "keep" and plan.t_for(x.param)]
    if ints:
        notes.append(
            f"{len(ints)} integer tensor(s) cannot be interpolated and were kept from the adapted model although "
            f"the plan moves them toward the base (e.g. '{ints[0]}'); only t = 1 restores an integer tensor."
        )
    if pair.dtype_mismatch:
        name, (db, da) = next(iter(pair.dtype_mismatch.items()))
        notes.append(
            f"{len(pair.dtype_mismatch)} tensor(s) differ in dtype between base and adapted (e.g. '{name}': "
            f"{str(db).removeprefix('torch.')} vs {str(da).removeprefix('torch.')}); they were merged in float32 "
            f"and written in {written}."
        )
    if pair.config_differences:
        notes.append(f"the configs differ ({'; '.join(pair.config_differences)}); the adapted config was used.")
    for name, (rb, ra) in pair.vocab_extension.items():
        notes.append(f"'{name}': vocabulary extension {rb} -> {ra} rows; rows {rb}.. kept from the adapted model.")
    return notes


def merge_into_model(pair: Pair, plan: Plan, model: torch.nn.Module, *, device: str = "cpu") -> list[TensorStat]:
    """Load the merged weights straight into an instantiated model (no disk), e.g. to evaluate a candidate."""
    params = dict(model.state_dict(keep_vars=True))
    stats = []
    with torch.no_grad():
        for op, tensor, stat in iter_merged(pair, plan, device=device):
            if op.name not in params:
                raise SpearError(f"the model has no parameter '{op.name}'; build it from the adapted config.")
            params[op.name].copy_(tensor)
            stats.append(stat)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return stats


def _bytes_to_write(ops: list[TensorOp], sides: list[Path]) -> int:
    """Everything the merge writes: tensors, headers, side files, and the report (~400 bytes per tensor)."""
    tensors = sum(t.out_dtype.itemsize * math.prod(t.shape) for t in ops)
    return tensors + sum(p.stat().st_size for p in sides) + 400 * len(ops) + 64 * 1024


def _finish_folder(folder: Path, sides: list[Path], pair: Pair, plan: Plan, report: MergeReport) -> None:
    """Copy config/tokenizer/generation files from the adapted model; write plan, report and model card."""
    for src in sides:
        if src.name not in TRAINING_FILES:  # they describe a training run the merged model never had
            shutil.copyfile(src, folder / src.name)
    if report.out_dtype is not None:
        set_config_dtype(folder / "config.json", report.out_dtype)
    plan.save(folder / "plan.yaml")
    (folder / "merge_report.json").write_text(report.model_dump_json(indent=1))
    (folder / "README.md").write_text(model_card(pair, plan, report))

"""Layer scoring from weights alone: per-tensor metrics → normalised within module type → per-layer scores.

Three separable steps, so the per-tensor work can run anywhere (threads, processes, Ray):
1. `score_names(base_path, adapted_path, names, config)` (spear_mm.scoring.tensor_task) — a pure, picklable unit of
   work: read the named tensors of both checkpoints, return one `ModuleScore` each.
2. `normalize_rows` — robust z-scores (or percentile ranks) of SWC and |SVD-drop| within each module type,
   combined as `α·SWC_n + (1−α)·drop_n`.
3. `layer_scores` — mean (or max) of a layer's matrix scores, ranked descending (rank 1 = most damaging).

`analyze(base, adapted, out_dir)` runs all three and returns a `ScoreTable`; step 1 runs on a thread pool here,
or on a process pool or Ray cluster (`executor=`, see spear_mm.scoring.jobs and spear_mm.executors).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import ValidationError

from spear_mm.errors import SpearError, validation_message
from spear_mm.io.pair import Pair, open_pair
from spear_mm.io.workdir import WorkDir, pair_owner, scored_pair
from spear_mm.progress import ProgressCallback, ProgressEvent
from spear_mm.scoring.jobs import ScoreJournal, score_on_executor, score_on_threads
from spear_mm.scoring.plots import save_figures
from spear_mm.scoring.probes import add_probe_scores
from spear_mm.scoring.table import LayerScore, ModuleScore, ScoreConfig, ScoreTable, Timing
from spear_mm.scoring.tensor_task import score_names, score_tensor_pair
from spear_mm.scoring.units import unit_scores

log = logging.getLogger(__name__)

__all__ = [
    "LayerScore",
    "ModuleScore",
    "ScoreConfig",
    "ScoreTable",
    "analyze",
    "layer_scores",
    "normalize_rows",
    "score_names",
    "score_pair",
    "score_tensor_pair",
]


def default_workers() -> int:
    """One worker per core (each with one torch thread): measured fastest on CPU; 1 on a GPU."""
    return max(1, min(8, os.cpu_count() or 1))


def score_pair(
    pair: Pair,
    config: ScoreConfig,
    *,
    workers: int | None = 1,
    progress: ProgressCallback | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    done: dict[str, ModuleScore] | None = None,
    on_rows: Callable[[list[ModuleScore]], None] | None = None,
) -> tuple[list[ModuleScore], int, int]:
    """Score every tensor of an open pair (largest first); returns (rows, torch threads, workers).

    `local` runs a thread pool in this process; `process` / `ray` send batches of tensor names to workers
    that read the checkpoints themselves (spear_mm.scoring.jobs). Rows in `done` are reused; `on_rows` gets
    each group of new rows as it arrives (the journal that lets a restarted run resume); `progress` an `analyze`
    event per tensor scored (reused rows counted as done; the label is the tensor's name).
    """
    done = dict(done or {})
    names = [n for n in sorted(pair.names, key=lambda n: -pair.adapted.infos[n].numel) if n not in done]
    rows: dict[str, ModuleScore] = dict(done)

    def arrived(new: list[ModuleScore]) -> None:
        if on_rows:  # journal first: a row that arrived is never lost
            on_rows(new)
        for row in new:
            rows[row.name] = row
            if progress:
                progress(ProgressEvent("analyze", len(rows), len(pair.names), row.name))

    if executor == "local":
        workers = workers or default_workers()
        threads = score_on_threads(pair, names, config, workers, arrived)
    else:
        _, threads, workers = score_on_executor(
            pair, names, config, executor=executor, workers=workers, ray_address=ray_address, on_rows=arrived
        )
    return [rows[n] for n in pair.names], threads, workers


# -- 2. normalisation within module type ---------------------------------------------------------------------------
def _robust_z(x: torch.Tensor) -> torch.Tensor:
    med = x.median()
    scale = 1.4826 * (x - med).abs().median()
    if scale <= 1e-12 * max(float(med.abs()), 1e-30):
        scale = x.std(unbiased=False)
    return (x - med) / scale if scale > 0 else torch.zeros_like(x)


def _pct_rank(x: torch.Tensor) -> torch.Tensor:
    """Percentile ranks in [0, 1], ties averaged (0.5 for a single value)."""
    n = x.numel()
    if n == 1:
        return torch.full_like(x, 0.5)
    less = (x[None, :] < x[:, None]).sum(1).to(x.dtype)
    equal = (x[None, :] == x[:, None]).sum(1).to(x.dtype)
    return (less + (equal - 1) / 2) / (n - 1)


def normalize_rows(rows: list[ModuleScore], config: ScoreConfig) -> list[ModuleScore]:
    """Set swc_n, drop_n and the combined score of every matrix row, normalising within each module type."""
    by_type: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        if r.swc is not None and r.layer is not None:  # embeddings/head are placed by spear_mm.scoring.units instead
            by_type[r.module].append(i)
    norm = _robust_z if config.normalize == "robust_z" else _pct_rank
    out = list(rows)
    for idx in by_type.values():
        swc = torch.tensor([rows[i].swc for i in idx], dtype=torch.float64)
        drop = torch.tensor([rows[i].drop for i in idx], dtype=torch.float64)
        drop = drop.abs() if config.drop_sign == "abs" else drop
        swc_n, drop_n = norm(swc), norm(drop)
        score = config.alpha * swc_n + (1 - config.alpha) * drop_n
        for j, i in enumerate(idx):
            out[i] = rows[i].model_copy(
                update=dict(swc_n=float(swc_n[j]), drop_n=float(drop_n[j]), score=float(score[j]))
            )
    return out


# -- 3. layers ---------------------------------------------------------------------------------------------------
def layer_scores(rows: list[ModuleScore], num_layers: int, config: ScoreConfig) -> list[LayerScore]:
    """Aggregate matrix scores per layer (mean | max) and rank them (1 = most damaging drift; ties by index)."""
    per: dict[int, list[ModuleScore]] = defaultdict(list)
    norms: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for r in rows:
        if r.layer is None or r.score is None:
            continue
        per[r.layer].append(r)
        norms[r.layer][0] += r.base_norm**2
        norms[r.layer][1] += r.delta_norm**2
    agg = max if config.aggregate == "max" else (lambda xs: sum(xs) / len(xs))
    layers = []
    for i in range(num_layers):
        ms = per.get(i, [])
        nb, nd = norms.get(i, [0.0, 0.0])
        layers.append(
            LayerScore(
                layer=i,
                score=agg([m.score for m in ms]) if ms else 0.0,
                swc_n=sum(m.swc_n for m in ms) / len(ms) if ms else 0.0,
                drop_n=sum(m.drop_n for m in ms) / len(ms) if ms else 0.0,
                rel_change=math.sqrt(nd / nb) if nb > 0 else 0.0,
                n_matrices=len(ms),
                top_module=max(ms, key=lambda m: m.score).module if ms else None,
            )
        )
    order = sorted(layers, key=lambda s: (-s.score, s.layer))
    ranks = {s.layer: k + 1 for k, s in enumerate(order)}
    return [s.model_copy(update={"rank": ranks[s.layer]}) for s in layers]


# -- public entry point ------------------------------------------------------------------------------------------
def analyze(
    base: str | Path,
    adapted: str | Path,
    out_dir: str | Path | None = None,
    *,
    alpha: float | None = None,
    aggregate: str | None = None,
    device: str | None = None,
    workers: int | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    probe: str | Path | None = None,
    ground_truth: bool = False,
    progress: ProgressCallback | None = None,
    config: ScoreConfig | None = None,
    probe_tokens: int = 2048,
    allow_vocab_extension: bool = False,
    force: bool = False,
) -> ScoreTable:
    """Score every layer of `adapted` against `base` from the weights (plus optional probe-data scores).

    `config` carries every scoring option (normalisation, edge, precision, …); `alpha`, `aggregate` and
    `device`, when given, override it (when not, the config's values hold: 0.5, mean, cpu by default). `executor` (local | process | ray, with `ray_address`) says where tensors are scored.
    With `out_dir`, writes scores.json, scores.csv, layer_scores.csv and the figures; rows are journalled there
    as they arrive, so a run interrupted and restarted with the same pair and config resumes.
    `allow_vocab_extension`: an adapted embedding/head with extra rows is scored on the rows it shares with the base.
    An `out_dir` holding another pair's scores is refused; with `force` it is moved aside (`NAME.replaced-TIME`).
    `progress` gets an `analyze` `ProgressEvent` per tensor scored.
    """
    given = dict(alpha=alpha, aggregate=aggregate, device=device)
    config = (config or ScoreConfig()).model_copy(update={k: v for k, v in given.items() if v is not None})
    device = config.device
    try:
        config = ScoreConfig.model_validate(config.model_dump())
    except ValidationError as exc:
        raise SpearError(validation_message(exc, "scoring option ")) from None
    started = time.perf_counter()
    pair = open_pair(base, adapted, allow_vocab_extension=allow_vocab_extension)
    # an output folder: not an input (the probe included), one writer, this pair's, dead temps cleaned
    inputs = [pair.base.path, pair.adapted.path, *([probe] if probe is not None else [])]
    owner = pair_owner(pair.base.fingerprint(), pair.adapted.fingerprint())
    work = (
        contextlib.nullcontext()
        if out_dir is None
        else WorkDir(out_dir, inputs, owner=owner, force=force, what="scores folder", legacy=scored_pair("scores.json"))
    )
    with work:
        where = dict(workers=workers, progress=progress, executor=executor, ray_address=ray_address)
        probes = dict(probe=probe, ground_truth=ground_truth, max_tokens=probe_tokens)
        return _score(pair, out_dir, config, started, where, probes)


def _score(pair: Pair, out_dir, config: ScoreConfig, started: float, where: dict, probes: dict) -> ScoreTable:
    """Weight-only scores of every tensor (journalled in `out_dir` as they arrive), normalised, per layer; then
    the optional probe scores; then the outputs, and only then the journal is closed for good."""
    fingerprints = pair.base.fingerprint(), pair.adapted.fingerprint()
    journal = None
    if out_dir is not None:
        header = dict(base=fingerprints[0], adapted=fingerprints[1], config=config.model_dump(mode="json"))
        journal = ScoreJournal(out_dir, header)
    try:
        rows, threads, workers = score_pair(
            pair,
            config,
            done=journal.resume() if journal else None,
            on_rows=journal.append if journal else None,
            **where,
        )
    finally:
        if journal:
            journal.close()
    rows = normalize_rows(rows, config)
    layers = layer_scores(rows, pair.num_layers, config)

    units = unit_scores(rows, layers)
    precisions = Counter(p for r in rows if r.precision for p in r.precision.split(","))
    table = ScoreTable(
        base=str(pair.base.path),
        adapted=str(pair.adapted.path),
        base_fingerprint=fingerprints[0],
        adapted_fingerprint=fingerprints[1],
        model_type=pair.adapted.model_type,
        num_layers=pair.num_layers,
        config=config,
        modules=rows,
        layers=layers,
        units=units,
        timing=Timing(
            weights_seconds=time.perf_counter() - started,
            workers=workers,
            torch_threads=threads,
            device=config.device,
            precision_counts=dict(precisions),
        ),
    )
    if probes["probe"] is not None or probes["ground_truth"]:
        table = add_probe_scores(
            table, pair, probes["probe"], ground_truth=probes["ground_truth"], max_tokens=probes["max_tokens"]
        )
    if out_dir is not None:
        table.save(out_dir)
        save_figures(table, out_dir)
        journal.finish()
    return table

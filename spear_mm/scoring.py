"""Layer scoring from weights alone: per-tensor metrics → normalised within module type → per-layer scores.

Three separable steps, so the per-tensor work can run anywhere (threads, processes, Ray):
1. `score_names(base_path, adapted_path, names, config)` — a pure, picklable unit of work: read the named
   tensors of both checkpoints, return one `ModuleScore` each (`score_tensor_pair` does one pair in memory).
2. `normalize_rows` — robust z-scores (or percentile ranks) of SWC and |SVD-drop| within each module type,
   combined as `α·SWC_n + (1−α)·drop_n`.
3. `layer_scores` — mean (or max) of a layer's matrix scores, ranked descending (rank 1 = most damaging).

`analyze(base, adapted, out_dir)` runs all three and returns a `ScoreTable`; step 1 runs on a thread pool here,
or on a process pool or Ray cluster (`executor=`, see spear_mm.score_jobs and spear_mm.executors).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path

import torch

from spear_mm.architecture import ParamInfo, layer_map
from spear_mm.checkpoint import Checkpoint, Pair, open_pair
from spear_mm.errors import SpearError
from spear_mm.score_table import LayerScore, ModuleScore, ScoreConfig, ScoreTable, Timing
from spear_mm.spectral import analyze_matrix

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (tensor name, done, total)

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


# -- 1. one tensor pair ------------------------------------------------------------------------------------------
def _check_finite(name: str, t: torch.Tensor, where: str) -> None:
    if t.dtype.is_floating_point and not bool(torch.isfinite(t).all()):
        raise SpearError(
            f"tensor '{name}' in {where} contains NaN or Inf values. The checkpoint is damaged (or training "
            "diverged); fix or re-export it before scoring."
        )


def _rel_and_cos(b: torch.Tensor, a: torch.Tensor, d: torch.Tensor) -> tuple[float, float, float, float]:
    """(‖W_B‖, ‖ΔW‖, rc, cos). rc = 0 for two zero tensors and 1 when only the base is zero."""
    nb, na, nd = (float(torch.linalg.vector_norm(x)) for x in (b, a, d))
    rc = nd / nb if nb > 0 else (0.0 if nd == 0 else 1.0)
    if nb > 0 and na > 0:
        cos = max(-1.0, min(1.0, float(torch.dot(a.reshape(-1), b.reshape(-1))) / (na * nb)))
    else:
        cos = 1.0 if nb == na == 0 else 0.0
    return nb, nd, rc, cos


def _chunked_rel_and_cos(base: torch.Tensor, adapted: torch.Tensor) -> tuple[float, float, float, float]:
    sums = torch.zeros(4, dtype=torch.float64)  # ‖B‖², ‖A‖², ‖Δ‖², ⟨A,B⟩
    flat_b, flat_a = base.reshape(-1), adapted.reshape(-1)
    step = 1 << 22
    for i in range(0, flat_b.numel(), step):
        b, a = flat_b[i : i + step].double(), flat_a[i : i + step].double()
        sums += torch.stack([b @ b, a @ a, (a - b) @ (a - b), a @ b])
    nb, na, nd = (float(x.sqrt()) for x in sums[:3])
    rc = nd / nb if nb > 0 else (0.0 if nd == 0 else 1.0)
    cos = max(-1.0, min(1.0, float(sums[3]) / (na * nb))) if nb > 0 and na > 0 else (1.0 if nb == na == 0 else 0.0)
    return nb, nd, rc, cos


def score_tensor_pair(
    base: torch.Tensor,
    adapted: torch.Tensor,
    param: ParamInfo,
    config: ScoreConfig | None = None,
    *,
    where: str = "the checkpoint",
) -> ModuleScore:
    """All weight-only metrics of one tensor pair: rc and cos for all; the spectral metrics for 2-D layer,
    embedding and head matrices; a row-wise drift summary for embeddings and head."""
    config = config or ScoreConfig()
    started = time.perf_counter()
    _check_finite(param.name, base, f"{where} (base)")
    _check_finite(param.name, adapted, f"{where} (adapted)")
    if base.shape != adapted.shape:
        raise SpearError(f"tensor '{param.name}': base {list(base.shape)} vs adapted {list(adapted.shape)}.")
    spectral = param.group in ("layer", "embed", "head") and base.ndim >= 2 and base.numel() > 0
    if spectral:
        b, a = base.to(torch.float32), adapted.to(torch.float32)
        d = a - b
        nb, nd, rc, cos = _rel_and_cos(b, a, d)
    else:  # embeddings/head can be large: reduce in row chunks so memory stays at the bf16 inputs
        nb, nd, rc, cos = _chunked_rel_and_cos(base, adapted)
    row = dict(
        name=param.name,
        group=param.group,
        layer=param.layer,
        module=param.module,
        shape=list(base.shape),
        base_norm=nb,
        delta_norm=nd,
        rel_change=rc,
        cos=cos,
    )
    if spectral:
        row.update(_spectral_metrics(b, a, d, rc, config))
    if param.group in ("embed", "head") and base.ndim == 2:
        from spear_mm.units import row_drift

        row.update(row_drift(base, adapted))
    row["seconds"] = time.perf_counter() - started
    return ModuleScore(**row)


def _spectral_metrics(b: torch.Tensor, a: torch.Tensor, d: torch.Tensor, rc: float, config: ScoreConfig) -> dict:
    opts = dict(method=config.method, precision=config.precision, device=config.device, edge=config.edge)
    sb, stb = analyze_matrix(b, snr_normalize=config.snr_normalize, **opts)
    sa, sta = analyze_matrix(a, snr_normalize=config.snr_normalize, **opts)
    k = max(1, stb.signal_count)
    top_b = float(sb[:k].sum())
    drop = (top_b - float(sa[:k].sum())) / top_b if top_b > 0 else 0.0
    out = dict(
        snr_base=stb.snr,
        snr_adapted=sta.snr,
        swc=stb.snr * rc,
        drop=drop,
        signal_base=stb.signal_count,
        signal_adapted=sta.signal_count,
        d_signal=sta.signal_count - stb.signal_count,
        erank_base=stb.effective_rank,
        erank_adapted=sta.effective_rank,
        d_erank=sta.effective_rank - stb.effective_rank,
        top_mass_base=stb.top_mass,
        precision=",".join(sorted({stb.precision, sta.precision})),
    )
    if config.delta_spectrum:  # diagnostic only: under `auto`, ΔW's spectrum stays in float32 (see docs/scoring.md)
        delta_opts = opts | ({"precision": "float32"} if config.precision == "auto" else {})
        _, std = analyze_matrix(d, snr_normalize=config.snr_normalize, **delta_opts)
        out.update(snr_delta=std.snr, erank_delta=std.effective_rank)
    return out


# -- the picklable unit of work ------------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _open(path: str) -> Checkpoint:
    return Checkpoint.open(path)


@lru_cache(maxsize=8)
def _params(path: str) -> dict[str, ParamInfo]:
    ckpt = _open(path)
    return layer_map(ckpt.names, ckpt.model_type)


def score_names(
    base_path: str | Path, adapted_path: str | Path, names: Iterable[str], config: ScoreConfig | None = None
) -> list[ModuleScore]:
    """Score the named tensors of a pair, reading each from the checkpoint files (one pair in memory at a time).

    Pure and picklable: a remote worker needs only the two paths, the names and the config.
    """
    base, adapted = _open(str(Path(base_path).resolve())), _open(str(Path(adapted_path).resolve()))
    params = _params(str(adapted.path))
    out = []
    for name in names:
        where = str(adapted.infos[name].file) if name in adapted.infos else str(adapted.path)
        out.append(score_tensor_pair(base.read(name), adapted.read(name), params[name], config, where=where))
    return out


def default_workers() -> int:
    """One worker per core (each with one torch thread): measured fastest on CPU; 1 on a GPU."""
    return max(1, min(8, os.cpu_count() or 1))


def score_pair(
    pair: Pair,
    config: ScoreConfig,
    *,
    workers: int | None = 1,
    progress: Progress | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    done: dict[str, ModuleScore] | None = None,
    on_rows: Callable[[list[ModuleScore]], None] | None = None,
) -> tuple[list[ModuleScore], int, int]:
    """Score every tensor of an open pair (largest first); returns (rows, torch threads, workers).

    `local` runs a thread pool in this process; `process` / `ray` send batches of tensor names to workers
    that read the checkpoints themselves (spear_mm.score_jobs). Rows in `done` are reused; `on_rows` gets
    each group of new rows as it arrives (the journal that lets a restarted run resume).
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
                progress(row.name, len(rows), len(pair.names))

    from spear_mm.score_jobs import score_on_executor, score_on_threads

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
        if r.swc is not None and r.layer is not None:  # embeddings/head are placed by spear_mm.units instead
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
    alpha: float = 0.5,
    aggregate: str = "mean",
    device: str = "cpu",
    workers: int | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    probe: str | Path | None = None,
    ground_truth: bool = False,
    progress: Progress | None = None,
    config: ScoreConfig | None = None,
    probe_tokens: int = 2048,
) -> ScoreTable:
    """Score every layer of `adapted` against `base` from the weights (plus optional probe-data scores).

    `config` carries the remaining options (normalisation, edge, precision, …); `alpha`, `aggregate` and
    `device` override it. `executor` (local | process | ray, with `ray_address`) says where tensors are scored.
    With `out_dir`, writes scores.json, scores.csv, layer_scores.csv and the figures; rows are journalled there
    as they arrive, so a run interrupted and restarted with the same pair and config resumes.
    """
    config = (config or ScoreConfig()).model_copy(update=dict(alpha=alpha, aggregate=aggregate, device=device))
    config = ScoreConfig.model_validate(config.model_dump())
    started = time.perf_counter()
    pair = open_pair(base, adapted)
    fingerprints = pair.base.fingerprint(), pair.adapted.fingerprint()
    journal = None
    if out_dir is not None:
        from spear_mm.score_jobs import ScoreJournal

        header = dict(base=fingerprints[0], adapted=fingerprints[1], config=config.model_dump(mode="json"))
        journal = ScoreJournal(out_dir, header)
    try:
        rows, threads, workers = score_pair(
            pair,
            config,
            workers=workers,
            progress=progress,
            executor=executor,
            ray_address=ray_address,
            done=journal.resume() if journal else None,
            on_rows=journal.append if journal else None,
        )
    finally:
        if journal:
            journal.close()
    rows = normalize_rows(rows, config)
    layers = layer_scores(rows, pair.num_layers, config)
    from spear_mm.units import unit_scores

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
            device=device,
            precision_counts=dict(precisions),
        ),
    )
    if probe is not None or ground_truth:
        from spear_mm.probes import add_probe_scores

        table = add_probe_scores(table, pair, probe, ground_truth=ground_truth, max_tokens=probe_tokens)
    if out_dir is not None:
        table.save(out_dir)
        journal.finish()
    return table

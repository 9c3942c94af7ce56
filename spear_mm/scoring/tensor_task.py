"""The unit of scoring work: the metrics of one base/adapted tensor pair (`score_tensor_pair`), and
`score_names`, which reads named tensors from both checkpoints and scores them — pure and picklable, so it runs
the same on a thread, in a process pool or on a Ray worker.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import torch

from spear_mm.errors import SpearError
from spear_mm.io.architecture import ParamInfo, layer_map
from spear_mm.io.checkpoint import Checkpoint, require_finite
from spear_mm.pair_stats import pair_stats
from spear_mm.scoring.spectral import analyze_matrix
from spear_mm.scoring.table import ModuleScore, ScoreConfig
from spear_mm.scoring.units import row_drift


# -- 1. one tensor pair ------------------------------------------------------------------------------------------
def _check_finite(name: str, t: torch.Tensor, where: str) -> None:
    require_finite(t, name, where, "scoring")


def _rel_and_cos(base: torch.Tensor, adapted: torch.Tensor) -> tuple[float, float, float, float]:
    """(‖W_B‖, ‖ΔW‖, rc, cos) from the merge's float64-accumulated `pair_stats` (memory: one block in float32).
    rc = 0 for two zero tensors and 1 when only the base is zero; cos = 0 when exactly one is zero."""
    s = pair_stats(adapted, base)
    nb, na, nd = math.sqrt(s.bb), math.sqrt(s.aa), math.sqrt(s.dd)
    rc = nd / nb if nb > 0 else (0.0 if nd == 0 else 1.0)
    cos = s.cos if nb > 0 and na > 0 else (1.0 if nb == na == 0 else 0.0)
    return nb, nd, rc, cos


def score_tensor_pair(
    base: torch.Tensor,
    adapted: torch.Tensor,
    param: ParamInfo,
    config: ScoreConfig | None = None,
    *,
    where: str = "the checkpoint",
    where_base: str | None = None,
) -> ModuleScore:
    """All weight-only metrics of one tensor pair: rc and cos for all; the spectral metrics for 2-D layer,
    embedding and head matrices; a row-wise drift summary for embeddings and head."""
    config = config or ScoreConfig()
    started = time.perf_counter()
    _check_finite(param.name, base, f"{where_base or where} (base)")
    _check_finite(param.name, adapted, f"{where} (adapted)")
    if base.shape != adapted.shape:
        raise SpearError(f"tensor '{param.name}': base {list(base.shape)} vs adapted {list(adapted.shape)}.")
    spectral = param.group in ("layer", "embed", "head") and base.ndim >= 2 and base.numel() > 0
    nb, nd, rc, cos = _rel_and_cos(base, adapted)
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
        b, a = base.to(torch.float32), adapted.to(torch.float32)
        row.update(_spectral_metrics(b, a, a - b, rc, config))
    if param.group in ("embed", "head") and base.ndim == 2:
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
        where_b = str(base.infos[name].file) if name in base.infos else str(base.path)
        b, a = base.read(name), adapted.read(name)
        if _extends_vocab(params[name], b, a):  # validated by open_pair(allow_vocab_extension=True) in the driver
            a = a[: b.shape[0]]
        out.append(score_tensor_pair(b, a, params[name], config, where=where, where_base=where_b))
    return out


def _extends_vocab(param: ParamInfo, b: torch.Tensor, a: torch.Tensor) -> bool:
    """An embedding/head whose adapted version has extra rows (a vocabulary extension): only shared rows compare."""
    return (
        param.group in ("embed", "head")
        and a.ndim == b.ndim == 2
        and a.shape[1] == b.shape[1] > 0
        and (a.shape[0] > b.shape[0])
    )

"""The result of `spear-mm analyze`: typed rows, JSON/CSV I/O and the two figures.

A scores folder holds `scores.json` (the whole `ScoreTable`, the source of truth), `scores.csv` (one row per
tensor), `layer_scores.csv` (one row per layer), `heatmap.png` and `layer_scores.png`.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from spear_mm import __version__
from spear_mm.errors import SpearError, read_text
from spear_mm.io.files import atomic_write, atomic_write_text

# the spectral options (spear_mm.scoring.spectral computes them; declared here, without torch, for the configs)
Precision = Literal["auto", "float32", "float64"]
SpectrumMethod = Literal["gram", "svd"]
Edge = Literal["mp", "spectrum"]

log = logging.getLogger(__name__)

SCORES_JSON = "scores.json"


class ScoreConfig(BaseModel):
    """Every scoring choice, recorded in the table so a run can be reproduced."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the SNR-weighted change vs the SVD drop")
    aggregate: Literal["mean", "max"] = Field("mean", description="layer score from its matrices' scores")
    normalize: Literal["robust_z", "rank"] = Field("robust_z", description="normalisation within a module type")
    drop_sign: Literal["abs", "signed"] = Field("abs", description="|drop|: a gain of signal mass is a change too")
    edge: Edge = Field("mp", description="noise edge: calibrated Marchenko–Pastur, or Spectrum's formula")
    snr_normalize: Literal["max"] | None = Field(None, description="max: SNR/σ₁ as Spectrum does (off by default)")
    method: SpectrumMethod = Field("gram", description="singular values from the Gram matrix, or svd (reference)")
    precision: Precision = Field("auto", description="precision of the singular values")
    device: str = "cpu"  # set from the command's --device
    delta_spectrum: bool = Field(True, description="also the spectrum of ΔW (diagnostic; +50% time)")


class ModuleScore(BaseModel):
    """Metrics of one tensor. Spectral fields are None for 1-D tensors, embeddings, head and final norm."""

    model_config = ConfigDict(extra="forbid")

    name: str
    group: str
    layer: int | None
    module: str
    shape: list[int]
    base_norm: float
    delta_norm: float
    rel_change: float  # ‖ΔW‖/‖W_B‖
    cos: float  # cosine of the flattened tensors
    snr_base: float | None = None
    snr_adapted: float | None = None
    snr_delta: float | None = None
    swc: float | None = None  # SNR(W_B)·rc
    drop: float | None = None  # relative loss of the base's top-k singular mass, k = base signal count
    signal_base: int | None = None
    signal_adapted: int | None = None
    d_signal: int | None = None
    erank_base: float | None = None
    erank_adapted: float | None = None
    d_erank: float | None = None
    erank_delta: float | None = None
    top_mass_base: float | None = None
    precision: str | None = None
    swc_n: float | None = None
    drop_n: float | None = None
    score: float | None = None  # α·swc_n + (1−α)·drop_n
    row_drift_median: float | None = None  # embeddings/head: per-row ‖ΔW_i‖/‖W_B,i‖, median over rows
    row_drift_p99: float | None = None
    row_drift_max: float | None = None
    seconds: float = 0.0


class LayerScore(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layer: int
    score: float
    rank: int = 0  # 1 = most damaging drift
    swc_n: float = 0.0
    drop_n: float = 0.0
    rel_change: float = 0.0  # over the layer's matrices: √(Σ‖ΔW‖²/Σ‖W_B‖²)
    n_matrices: int = 0
    top_module: str | None = None
    activation_drift: float | None = None  # 1 − linear CKA of the layer's output on the probe text
    restore_gain: float | None = None  # probe NLL(adapted) − NLL(adapted with this layer restored, t = 1)


UnitGroup = Literal["layer", "embed", "head", "final_norm", "other"]
RankBy = Literal["score", "restore_gain", "activation_drift"]
RANK_BY = ("score", "restore_gain", "activation_drift")


def check_rank_by(rank_by: str) -> str:
    """The ranking name, or a clear error (`--rank-by`)."""
    if rank_by not in RANK_BY:
        raise SpearError(f"--rank-by must be one of {', '.join(RANK_BY)}, not {rank_by!r}.")
    return rank_by


class UnitScore(BaseModel):
    """One plannable unit (a layer, the embeddings, lm_head, the final norm) in the joint ranking of all units.

    Layers carry their layer score; a unit outside the blocks gets the layers' score at the quantile its drift
    takes among the layers' relative changes (`drift_quantile`; see spear_mm/scoring/units.py)."""

    model_config = ConfigDict(extra="forbid")

    unit: str  # "layer.3" | "embed" | "head" | "final_norm" | "other"
    group: UnitGroup
    layer: int | None = None
    score: float
    rank: int = 0  # 1 = most damaging drift, among all units
    rel_change: float = 0.0
    cos: float | None = None
    tied: bool = False  # embed: lm_head shares this tensor
    n_tensors: int = 0
    row_drift_median: float | None = None
    row_drift_p99: float | None = None
    drift_quantile: float | None = None  # units outside the blocks: share of layers that moved less
    swc: float | None = None
    drop: float | None = None
    activation_drift: float | None = None
    restore_gain: float | None = None


class ProbeReport(BaseModel):
    """Data-aware scores: what the probe text says, and how far the weight-only score can be trusted."""

    model_config = ConfigDict(extra="forbid")

    probe: str
    tokens: int
    nll_base: float | None = None
    nll_adapted: float | None = None
    spearman_cka: float | None = None  # weight-only score vs activation drift
    spearman_ground_truth: float | None = None  # weight-only score vs restore gain
    seconds: float = 0.0


class Timing(BaseModel):
    weights_seconds: float
    probe_seconds: float = 0.0
    workers: int = 1
    torch_threads: int = 1
    device: str = "cpu"
    precision_counts: dict[str, int] = Field(default_factory=dict)


class ScoreTable(BaseModel):
    """Scores of one base/adapted pair: per-tensor rows, per-layer scores and ranks, provenance."""

    model_config = ConfigDict(extra="forbid")

    spear_mm_scores: Literal[1] = 1
    base: str
    adapted: str
    base_fingerprint: str
    adapted_fingerprint: str
    model_type: str
    num_layers: int
    config: ScoreConfig
    modules: list[ModuleScore]
    layers: list[LayerScore]
    units: list[UnitScore] = Field(default_factory=list)  # every plannable unit, jointly ranked (empty: old file)
    probe: ProbeReport | None = None
    timing: Timing
    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    spear_mm_version: str = __version__

    @model_validator(mode="after")
    def _complete(self) -> ScoreTable:
        """One score per layer 0..num_layers-1 (a file cut short or edited by hand is refused, not half-used)."""
        got = sorted(s.layer for s in self.layers)
        if got != list(range(self.num_layers)):
            missing = sorted(set(range(self.num_layers)) - set(got))
            extra = sorted({x for x in got if not 0 <= x < self.num_layers} | {x for x in got if got.count(x) > 1})
            raise ValueError(
                f"the scores cover layers {got[:3]}…{got[-3:] if got else []} but num_layers is {self.num_layers} "
                f"(missing {missing[:10]}, unexpected or repeated {extra[:10]})"
            )
        return self

    @property
    def alpha(self) -> float:
        return self.config.alpha

    @property
    def aggregate(self) -> str:
        return self.config.aggregate

    def ranking(self) -> list[int]:
        """Layer indices, most damaging drift first."""
        return [s.layer for s in sorted(self.layers, key=lambda s: s.rank)]

    def unit_ranking(self, rank_by: RankBy = "score") -> list[str]:
        """Unit ids ('layer.3', 'embed', …), most damaging first, by the weight score or a probe measurement.

        Scores written before units existed rank the layers only. Units without the probe metric (e.g. lm_head
        for activation drift) follow the measured ones, in weight-score order."""
        units = self.units or [
            UnitScore(
                unit=f"layer.{s.layer}",
                group="layer",
                layer=s.layer,
                score=s.score,
                rank=s.rank,
                activation_drift=s.activation_drift,
                restore_gain=s.restore_gain,
            )
            for s in self.layers
        ]
        if check_rank_by(rank_by) == "score":
            return [u.unit for u in sorted(units, key=lambda u: (u.rank, u.unit))]
        if all(getattr(u, rank_by) is None for u in units):
            flag = "--probe FILE --ground-truth" if rank_by == "restore_gain" else "--probe FILE"
            raise SpearError(
                f"--rank-by {rank_by}: these scores hold no {rank_by.replace('_', ' ')}. Re-run "
                f"`spear-mm analyze BASE ADAPTED -o SCORES {flag}`, or rank by score."
            )

        def key(u: UnitScore) -> tuple:
            v = getattr(u, rank_by)
            return (v is None, -(v or 0.0), u.rank)

        return [u.unit for u in sorted(units, key=key)]

    def unit(self, unit: str) -> UnitScore | None:
        return next((u for u in self.units if u.unit == unit), None)

    def layer(self, i: int) -> LayerScore:
        return self.layers[i]

    def non_layer(self) -> list[ModuleScore]:
        """Embeddings, head, final norm and other tensors outside the transformer blocks (relative change only)."""
        return [m for m in self.modules if m.group != "layer"]

    def content_hash(self) -> str:
        """sha256 (16 hex) of the canonical JSON; recorded by plans as `scores_hash`."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]

    def check_pair(self, base_fingerprint: str, adapted_fingerprint: str, source: str = "scores") -> None:
        """Raise when these scores were computed for another base/adapted pair."""
        if (base_fingerprint, adapted_fingerprint) != (self.base_fingerprint, self.adapted_fingerprint):
            raise SpearError(
                f"{source} were computed for another pair (scores: base {self.base_fingerprint}, adapted "
                f"{self.adapted_fingerprint}; given: base {base_fingerprint}, adapted {adapted_fingerprint}; "
                f"scored folders: {self.base} and {self.adapted}). Re-run `spear-mm analyze` on this pair."
            )

    # -- I/O ---------------------------------------------------------------------------------------------------
    def save(self, out_dir: str | Path) -> Path:
        """Write scores.json, scores.csv and layer_scores.csv into `out_dir`, atomically per file (the figures:
        `spear_mm.scoring.plots.save_figures`)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / SCORES_JSON, self.model_dump_json(indent=1))
        _write_csv(out / "scores.csv", [_module_csv_row(m) for m in self.modules])
        _write_csv(out / "layer_scores.csv", [s.model_dump() for s in self.layers])
        return out

    @classmethod
    def load(cls, path: str | Path) -> ScoreTable:
        """Load a scores folder (or its scores.json)."""
        path = Path(path)
        file = path / SCORES_JSON if path.is_dir() else path
        if not file.exists():
            raise SpearError(f"{path}: no {SCORES_JSON}. Run `spear-mm analyze BASE ADAPTED -o {path}` first.")
        try:
            return cls.model_validate_json(read_text(file, "scores file"))
        except ValidationError as exc:
            raise SpearError(
                f"{file}: not a complete spear-mm scores file ({exc.errors()[0]['msg']}). Re-run `spear-mm analyze`."
            ) from exc


CSV_FIRST = ["layer", "module", "name", "score"]


def _module_csv_row(m: ModuleScore) -> dict:
    row = m.model_dump()
    row["shape"] = "x".join(map(str, m.shape))
    return {k: row[k] for k in CSV_FIRST} | {k: v for k, v in row.items() if k not in CSV_FIRST}


def _write_csv(path: Path, rows: list[dict]) -> None:
    def write(f) -> None:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else CSV_FIRST)
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)

    atomic_write(path, write, newline="")


def read_scores_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a scores.csv as dicts of strings (for tests and spreadsheets)."""
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))

"""A statistics folder, and the lazy reader the merge uses.

Two sides, each one model reading one probe:
- `general`: the base model on general text (what the merge must keep working as before CPT);
- `domain`: the adapted model on domain text (what the merge must keep from CPT).

Files (float32 safetensors; `stats.json` is written last, so a folder without it is incomplete):
- `grams.<side>.<part>.safetensors`: for every input *site* of a linear layer in the transformer blocks, the mean
  x xᵀ over the probe tokens of that layer's input x (in × in). Layers that read the same input (q/k/v, gate/up)
  share one site; `part` is the layer group collected in one pass (bounded memory, see collect.py).
- `fisher.<side>.safetensors`: the diagonal Fisher information of every parameter (mean over probe windows of the
  squared gradient of the window's mean token NLL).
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors import safe_open

from spear_mm.errors import SpearError
from spear_mm.statistics import Kind

Side = Literal["general", "domain"]
SIDES: tuple[Side, ...] = ("general", "domain")
META = "stats.json"


class ProbeInfo(BaseModel):
    """One side's probe: where its text came from, its token count and the hash of its token ids."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    tokens: int
    key: str


class StatsMeta(BaseModel):
    """What a statistics folder holds (`stats.json`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    spear_mm_stats: Literal[1] = 1
    key: str  # content hash of the pair, both probes and the kinds: a changed input gives a new key
    base_fingerprint: str
    adapted_fingerprint: str
    kinds: list[Kind]
    probes: dict[Side, ProbeInfo]
    sites: dict[str, str] = Field(default_factory=dict)  # linear weight name -> site key (Gram file tensor name)
    transposed: list[str] = Field(default_factory=list)  # weights stored in × out (GPT-2's Conv1D)
    files: dict[str, str] = Field(default_factory=dict)  # "<side>/<site>" or "fisher/<side>" -> file name
    seconds: dict[str, float] = Field(default_factory=dict)
    device: str = "cpu"


def file_key(path: Path) -> str | None:
    """The `key` recorded in a statistics safetensors file's metadata (None if unreadable)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("key")
    except Exception:  # a cut or foreign file: collected again
        return None


class Statistics:
    """A finished statistics folder, read lazily: `gram(side, weight)` and `fisher(side, name)` open the file that
    holds that one tensor and read only it."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        meta = self.folder / META
        if not meta.is_file():
            raise SpearError(
                f"{self.folder}: no statistics here ({META} missing: not collected, or the collection was cut). "
                "Run `spear-mm stats BASE ADAPTED -o FOLDER` first (it resumes a cut collection)."
            )
        try:
            self.meta = StatsMeta.model_validate_json(meta.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise SpearError(f"{meta}: not a spear-mm statistics file ({exc}); collect it again.") from exc

    def check_pair(self, base_fingerprint: str, adapted_fingerprint: str) -> None:
        """Refuse statistics collected on another pair (they describe other weights' inputs)."""
        m = self.meta
        if (m.base_fingerprint, m.adapted_fingerprint) != (base_fingerprint, adapted_fingerprint):
            raise SpearError(
                f"{self.folder}: these statistics were collected on another pair (fingerprints base "
                f"{m.base_fingerprint}, adapted {m.adapted_fingerprint}; this pair: {base_fingerprint}, "
                f"{adapted_fingerprint}). Collect them for this pair: spear-mm stats BASE ADAPTED -o FOLDER."
            )

    def require(self, kind: Kind) -> None:
        if kind not in self.meta.kinds:
            raise SpearError(
                f"{self.folder}: the merge method '{kind}' needs {kind} statistics, but this folder holds only "
                f"{', '.join(self.meta.kinds)}. Collect them: spear-mm stats … --kinds {kind} -o {self.folder}."
            )

    def site(self, weight: str) -> str | None:
        return self.meta.sites.get(weight)

    def transposed(self, weight: str) -> bool:
        return weight in self._transposed

    @cached_property
    def _transposed(self) -> set[str]:
        return set(self.meta.transposed)

    def gram(self, side: Side, weight: str) -> torch.Tensor | None:
        """The mean input Gram matrix (in × in, float32) of a linear weight on one side; None if not a linear."""
        site = self.site(weight)
        if site is None:
            return None
        return self._read(self.meta.files[f"{side}/{site}"], site)

    def fisher(self, side: Side, name: str) -> torch.Tensor | None:
        """The diagonal Fisher of one parameter (same shape, float32); None when the model had no such parameter."""
        file = self.meta.files.get(f"fisher/{side}")
        if file is None:
            return None
        with safe_open(str(self.folder / file), framework="pt") as f:
            return f.get_tensor(name) if name in f.keys() else None  # noqa: SIM118 (safe_open has no __contains__)

    def _read(self, file: str, tensor: str) -> torch.Tensor:
        path = self.folder / file
        try:
            with safe_open(str(path), framework="pt") as f:
                return f.get_tensor(tensor)
        except (OSError, KeyError) as exc:
            raise SpearError(f"{path}: cannot read '{tensor}' ({exc}); collect the statistics again.") from exc


def read_meta(folder: Path) -> StatsMeta | None:
    """The folder's finished metadata, or None (absent or unreadable)."""
    try:
        return StatsMeta.model_validate(json.loads((folder / META).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None

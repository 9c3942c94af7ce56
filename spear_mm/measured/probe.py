"""Probe evaluations for the measured planner: merge per-unit t into one in-memory model, measure two NLLs.

- the general probe: text sampled once from the base model (no data needed; spear_mm.measured.samples.sample_base_text),
  or any general text the user passes;
- the domain probe: held-out CPT text (or any domain text).

`ProbeEvaluator.evaluate({unit: t})` SLERPs every tensor of each unit toward the base by its t (units not
named keep the adapted weights), only re-merging the units whose t changed (tensors read lazily from both
checkpoints: memory is one fp32 model plus one tensor pair), and returns the mean token NLL on both probes. Nothing is written to disk except the result cache: one JSON line per evaluation, keyed by the
content hash of the pair, the probe tokens and the t of every unit, so a re-run (or a resumed run) reuses
every evaluation it already paid for.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spear_mm.errors import SpearError
from spear_mm.io.files import content_key, open_append
from spear_mm.io.pair import Pair
from spear_mm.merging.methods import METHODS
from spear_mm.planning.plan import Plan
from spear_mm.progress import ProgressCallback, ProgressEvent
from spear_mm.scoring.units import units_of
from spear_mm.statistics.collect import WINDOW, Probes, probe_key, probe_windows, windows_of

log = logging.getLogger(__name__)

__all__ = ["WINDOW", "ProbeEvaluator", "ProbeResult", "ProbeSet", "load_probes", "windows_of"]


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"


@dataclass(frozen=True)
class ProbeSet(Probes):
    """Tokenised general and domain probes and where they came from (the statistics' `Probes`), with the token
    counts and content key the planner records."""

    @property
    def general_tokens(self) -> int:
        return sum(w.shape[1] for w in self.general)

    @property
    def domain_tokens(self) -> int:
        return sum(w.shape[1] for w in self.domain)

    def key(self) -> str:
        """Both probes' tokens, hashed as one (the planner's cache key; unchanged since it was written inline)."""
        return probe_key([*self.general, torch.tensor([-1]), *self.domain])


def load_probes(tokenizer_dir: Path, general: Path, domain: Path, max_tokens: int = 1024) -> ProbeSet:
    """Tokenise both probe files with the adapted model's tokenizer (at most `max_tokens` tokens each)."""
    out = probe_windows(tokenizer_dir, general, domain, max_tokens)
    return ProbeSet(out["general"], out["domain"], str(general), str(domain))


@dataclass
class ProbeResult:
    general: float  # mean token NLL on the general probe
    domain: float
    cached: bool = False
    seconds: float = 0.0


@dataclass
class ProbeEvaluator:
    """One adapted model in memory whose units are re-merged toward the base for each evaluation."""

    pair: Pair
    probes: ProbeSet
    cache_path: Path | None = None
    device: str = "cpu"
    sublayers: bool = False  # units 'layer.N.attn' and 'layer.N.mlp' instead of 'layer.N'
    method: str = "slerp"  # how a unit moves toward the base: slerp, or a data-aware operator (regmean, fisher)
    statistics: str | None = None  # the operator's statistics folder (spear-mm stats)
    evaluations: int = 0  # probe evaluations run (cache hits not counted)
    cache_hits: int = 0
    seconds: float = 0.0
    history: list[tuple[dict[str, float], ProbeResult]] = field(default_factory=list)
    progress: ProgressCallback | None = None  # a `planner` event (done of planned) per evaluation, cached or run
    planned: int = 0  # the evaluations the planner expects to make (for progress)

    def __post_init__(self) -> None:
        from transformers import AutoModelForCausalLM

        if self.pair.vocab_extension:
            raise SpearError(
                "the measured planner needs base and adapted with the same vocabulary; this pair extends it "
                f"({', '.join(self.pair.vocab_extension)}). Plan with a weight-only policy instead."
            )
        self.model = AutoModelForCausalLM.from_pretrained(self.pair.adapted.path, dtype=torch.float32)
        self.model.eval().to(self.device)
        self.params = dict(self.model.state_dict(keep_vars=True))
        units = units_of(self.pair.params, self.sublayers)
        self.units = {u: [n for n in names if n in self.params] for u, names in units.items()}
        self.units = {u: names for u, names in self.units.items() if names}
        self._current = dict.fromkeys(self.units, 0.0)
        stats = None if self.statistics is None else str(self.statistics)
        plan = Plan(num_layers=self.pair.num_layers, method=self.method, statistics=stats)
        self.merger = METHODS[self.method].from_plan(plan)
        context = dict(
            base=self.pair.base.fingerprint(), adapted=self.pair.adapted.fingerprint(), probes=self.probes.key()
        )
        stats = getattr(self.merger, "statistics", None)
        if stats is not None:
            stats.check_pair(context["base"], context["adapted"])
            context |= {"method": self.method, "statistics": stats.meta.key}  # SLERP keeps its old cache keys
        self._context = content_key(**context)
        self._cache = self._read_cache()

    def release(self) -> None:
        """Drop the in-memory model (the evaluator can no longer evaluate; its history and counts remain)."""
        self.model, self.params = None, {}

    # -- cache ---------------------------------------------------------------------------------------------------
    def _read_cache(self) -> dict[str, tuple[float, float]]:
        if self.cache_path is None or not self.cache_path.is_file():
            return {}
        out = {}
        for line in self.cache_path.read_bytes().splitlines():
            try:
                row = json.loads(line.decode("utf-8"))
                nll = (float(row["general"]), float(row["domain"]))
            except (ValueError, KeyError, TypeError, AttributeError):  # UnicodeDecodeError is a ValueError
                continue  # a line cut by an interrupted run, or damaged: that evaluation is run again
            if isinstance(row.get("key"), str) and all(math.isfinite(x) for x in nll):
                out[row["key"]] = nll
        return out

    def _key(self, ts: dict[str, float]) -> str:
        effective = {u: round(float(ts.get(u, 0.0)), 6) for u in self.units}
        return content_key(context=self._context, ts={u: t for u, t in effective.items() if t > 0})

    # -- evaluation ----------------------------------------------------------------------------------------------
    def evaluate(self, ts: dict[str, float]) -> ProbeResult:
        """Probe NLLs of the adapted model with each named unit moved toward the base by its t (`method`)."""
        unknown = set(ts) - set(self.units)
        if unknown:
            raise SpearError(f"unknown unit(s) {sorted(unknown)}; this model's units: {', '.join(self.units)}.")
        key = self._key(ts)
        if key in self._cache:
            self.cache_hits += 1
            result = ProbeResult(*self._cache[key], cached=True)
        else:
            started = time.perf_counter()
            self._apply(ts)
            result = ProbeResult(self._nll(self.probes.general), self._nll(self.probes.domain))
            result.seconds = time.perf_counter() - started
            self.evaluations += 1
            self.seconds += result.seconds
            self._cache[key] = (result.general, result.domain)
            if self.cache_path is not None:
                with open_append(self.cache_path) as f:  # a line per evaluation: nothing lost
                    if self.cache_path.stat().st_size and not _ends_with_newline(self.cache_path):
                        f.write("\n")  # after a line cut by a kill: keep this one whole
                    row = {"key": key, "general": result.general, "domain": result.domain, "ts": ts}
                    f.write(json.dumps(row) + "\n")
        self.history.append((dict(ts), result))
        if self.progress is not None:
            done = self.evaluations + self.cache_hits
            self.progress(ProgressEvent("planner", done, max(self.planned, done), self.method))
        return result

    def _apply(self, ts: dict[str, float]) -> None:
        with torch.no_grad():
            for unit, names in self.units.items():
                t = float(ts.get(unit, 0.0))
                if t == self._current[unit]:
                    continue
                for n in names:  # read per merge: memory stays at one model plus one tensor pair
                    a = self.pair.adapted.read(n).to(torch.float32)
                    b = self.pair.base.read(n).to(torch.float32)
                    self.params[n].copy_(self.merger.merge(a, b, t, name=n))
                self._current[unit] = t
        if hasattr(self.model, "tie_weights"):
            self.model.tie_weights()

    @torch.no_grad()
    def _nll(self, windows: list[torch.Tensor]) -> float:
        total, count = 0.0, 0
        for ids in windows:
            ids = ids.to(self.device)
            out = self.model(input_ids=ids, labels=ids)
            n = ids.shape[1] - 1
            total += float(out.loss) * n
            count += n
        return total / count

"""What the measured planner optimises: its settings (`PlannerConfig`), the probe objective (`Objective`) and the
registry of refinements `refine` may name (`REFINEMENTS`; search.py registers the built-ins, imported by the
package's __init__)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from spear_mm.calibration.probe import ProbeResult

# name -> search(obj, effects, order, start, config, run) -> (ts, ProbeResult): the black-box refinement
REFINEMENTS: dict[str, Callable[..., tuple[dict[str, float], Any]]] = {}


def register_refinement(name: str):
    """Decorator: make a refinement available as `refine: NAME` (its docstring's first line is its summary)."""

    def decorate(search: Callable[..., tuple[dict[str, float], Any]]):
        REFINEMENTS[name] = search
        return search

    return decorate


def registered_refinement(name: str) -> str:
    if name not in REFINEMENTS:
        raise ValueError(f"unknown refinement {name!r}: the registered ones are {', '.join(REFINEMENTS)}")
    return name


class PlannerConfig(BaseModel):
    """Every choice of the measured planner (recorded in the plan's provenance)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    t_mid: float = Field(0.5, gt=0.0, lt=1.0)  # the intermediate t measured per unit (besides t = 1)
    max_domain_loss: float = Field(0.1, ge=0.0, le=1.0)  # share of the probe's domain gain that may be lost
    target_retention: float | None = Field(None, gt=0.0, le=1.5)  # probe r to reach (then: most domain kept)
    budget: int = Field(30, ge=0)  # probe evaluations for the black-box refinement
    # search one t per efficiency tier, one t per unit kind (attention, MLP, embeddings, final norm), or single units
    refine: Annotated[str, AfterValidator(registered_refinement)] = "tiers"
    tiers: int = Field(3, ge=2, le=8)  # refine="tiers": units split into this many tiers by measured efficiency
    refine_units: int = Field(8, ge=1)  # refine="units": units whose t the refinement searches
    granularity: Literal["layer", "sublayer"] = "layer"  # sublayer: attention and MLP of a layer are two units
    probe_units: int | None = Field(None, ge=1)  # measure only the top N units of the ranking (None: all)
    t_step: float = Field(0.05, gt=0.0, le=0.5)  # grid of t in the refinement
    uniform_seeds: tuple[float, ...] = (0.3, 0.6, 0.9)  # uniform plans tried as starting points
    tolerance: float = Field(0.005, ge=0.0)  # objective differences below this are probe noise: restore less
    seed: int = 0


class Objective:
    """The probe objective and its constraint for one pair; `value` is maximised, `violation` ≤ 0 is feasible."""

    def __init__(self, base: ProbeResult, adapted: ProbeResult, config: PlannerConfig):
        self.base, self.adapted, self.config = base, adapted, config
        self.damage = adapted.general - base.general  # general NLL CPT added (> 0: something to recover)
        self.domain_gain = max(base.domain - adapted.domain, 0.0)
        self.allow = config.max_domain_loss * self.domain_gain

    @property
    def mode(self) -> str:
        return "keep" if self.config.target_retention is None else "target"

    def describe(self) -> str:
        if self.mode == "keep":
            return (
                f"maximise the general-probe damage recovered, losing at most {self.config.max_domain_loss:.0%} "
                f"of the domain-probe gain ({self.allow:.4f} nats/token)"
            )
        return f"reach general-probe recovery ≥ {self.config.target_retention:g}, keeping the most domain gain"

    def recovered(self, r: ProbeResult) -> float:
        return (self.adapted.general - r.general) / self.damage if self.damage > 0 else 0.0

    def domain_kept(self, r: ProbeResult) -> float:
        if self.domain_gain > 0:
            return (self.base.domain - r.domain) / self.domain_gain
        return self.adapted.domain - r.domain  # no gain to keep: less NLL is better

    def value(self, r: ProbeResult) -> float:
        return self.recovered(r) if self.mode == "keep" else self.domain_kept(r)

    def violation(self, r: ProbeResult) -> float:
        if self.mode == "keep":
            return r.domain - (self.adapted.domain + self.allow)
        return self.config.target_retention - self.recovered(r)

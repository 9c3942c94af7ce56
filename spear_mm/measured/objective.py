"""What the measured planner optimises: its settings (`PlannerConfig`), the probe objective (`Objective`) and the
registry of refinements `refine` may name (`REFINEMENTS`; search.py registers the built-ins, imported by the
package's __init__)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from spear_mm.errors import SpearError

if TYPE_CHECKING:  # annotations only: the probe module loads torch and transformers
    from spear_mm.measured.probe import ProbeResult

PROBE_TOKENS = 1024  # the planner's tokens per probe (`analyze --probe-tokens` is another probe: scoring/layers.py)

# name -> search(obj, effects, order, start, config, run) -> (ts, ProbeResult): the black-box refinement
REFINEMENTS: dict[str, Callable[..., tuple[dict[str, float], Any]]] = {}


def register_refinement(name: str):
    """Decorator: make a refinement available as `refine: NAME` (its docstring's first line is its summary).
    Another function under a name already registered is refused (a plugin cannot silently replace a built-in)."""

    def decorate(search: Callable[..., tuple[dict[str, float], Any]]):
        known = REFINEMENTS.get(name)
        if known is not None and _origin(known) != _origin(search):  # the same code imported again is fine
            raise SpearError(
                f"refinement {name!r} is registered twice ({_origin(known)} and {_origin(search)}): give the new "
                "refinement another name."
            )
        REFINEMENTS[name] = search
        return search

    return decorate


def _origin(search: Callable[..., Any]) -> str:
    return f"{search.__module__}.{search.__qualname__}"


def registered_refinement(name: str) -> str:
    if name not in REFINEMENTS:
        raise ValueError(f"unknown refinement {name!r}: the registered ones are {', '.join(REFINEMENTS)}")
    return name


class PlannerConfig(BaseModel):
    """Every choice of the measured planner (recorded in the plan's provenance). The descriptions are the help of
    the `--planner-…` flags of `run` and `plan` (spear_mm.cli.config_options)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    t_mid: float = Field(0.5, gt=0.0, lt=1.0, description="the intermediate t measured per unit (besides t = 1)")
    max_domain_loss: float = Field(0.1, ge=0.0, le=1.0, description="share of the domain-probe gain the plan may lose")
    probe_recovery: float | None = Field(
        None,
        gt=0.0,
        le=1.5,
        description="instead of --planner-max-domain-loss: reach this share of the general-probe damage recovered, keeping the most domain",
    )
    budget: int = Field(30, ge=0, description="probe evaluations for the black-box refinement")
    refine: Annotated[str, AfterValidator(registered_refinement)] = Field(
        "tiers", description="the refinement: tiers, kinds, units or another registered one (spear-mm ls refinements)"
    )
    tiers: int = Field(3, ge=2, le=8, description="with refine=tiers: units split into this many tiers by efficiency")
    refine_units: int = Field(8, ge=1, description="with refine=units: the units whose t the refinement searches")
    granularity: Literal["layer", "sublayer"] = Field(
        "layer", description="planner units; sublayer: a layer's attention and MLP are two units"
    )
    probe_units: int | None = Field(
        None, ge=1, description="measure only the top N units of the ranking (default: all)"
    )
    t_step: float = Field(0.05, gt=0.0, le=0.5, description="grid of t in the refinement")
    uniform_seeds: tuple[Annotated[float, Field(ge=0.0, le=1.0)], ...] = Field(
        (0.3, 0.6, 0.9), description="uniform plans tried as starting points (comma-separated t in [0, 1])"
    )
    tolerance: float = Field(
        0.005, ge=0.0, description="objective differences below this are probe noise: restore less"
    )
    seed: int = Field(0, description="seed of the refinement's sampler")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        """`target_retention` is `probe_recovery`: a value is refused naming the new key; the `null` that resolved
        run.yaml files written before the rename hold is dropped (so `run --config OLD_RUN/run.yaml` still works)."""
        if isinstance(data, dict) and "target_retention" in data:
            if data["target_retention"] is not None:
                raise ValueError(
                    "target_retention: the planner's general-probe target is now probe_recovery (run's own "
                    "target_retention: chooses among the evaluated models by R)"
                )
            data = {k: v for k, v in data.items() if k != "target_retention"}
        return data

    @field_validator("uniform_seeds", mode="before")
    @classmethod
    def _seeds(cls, v: Any) -> Any:
        """'0.3,0.6' as a flag gives it; YAML has lists, not tuples."""
        if isinstance(v, str):
            try:
                return tuple(float(x) for x in v.split(",") if x.strip())
            except ValueError:
                raise ValueError(f"{v!r}: give comma-separated t values, e.g. 0.3,0.6,0.9") from None
        return tuple(v) if isinstance(v, list) else v

    @model_validator(mode="after")
    def _one_constraint(self) -> PlannerConfig:
        """probe_recovery replaces the max_domain_loss constraint: both given, one would be ignored silently."""
        if (
            self.probe_recovery is not None
            and self.max_domain_loss != type(self).model_fields["max_domain_loss"].default
        ):
            raise ValueError(
                "max_domain_loss and probe_recovery are two objectives (keep the domain gain, or reach a general "
                "recovery): give one (--planner-max-domain-loss or --planner-probe-recovery)"
            )
        return self

    def key_dump(self) -> dict[str, Any]:
        """The settings as hashed in resume keys: `probe_recovery` under its old name, so earlier runs' keys hold."""
        data = self.model_dump(mode="json")
        data["target_retention"] = data.pop("probe_recovery")
        return data


class PlannerOptions(PlannerConfig):
    """The measured planner's options as `run` (run.yaml `planner:`) and `plan` take them: `PlannerConfig`'s
    fields and the probe length; strict types (no "true" strings), unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    probe_tokens: int = Field(PROBE_TOKENS, ge=2, description="tokens per probe (general and domain)")

    def planner_config(self) -> PlannerConfig:
        return PlannerConfig(**self.model_dump(exclude={"probe_tokens"}))


class Objective:
    """The probe objective and its constraint for one pair; `value` is maximised, `violation` ≤ 0 is feasible."""

    def __init__(self, base: ProbeResult, adapted: ProbeResult, config: PlannerConfig):
        self.base, self.adapted, self.config = base, adapted, config
        self.damage = adapted.general - base.general  # general NLL CPT added (> 0: something to recover)
        self.domain_gain = max(base.domain - adapted.domain, 0.0)
        self.allow = config.max_domain_loss * self.domain_gain

    @property
    def mode(self) -> str:
        return "keep" if self.config.probe_recovery is None else "target"

    def describe(self) -> str:
        if self.mode == "keep":
            return (
                f"maximise the general-probe damage recovered, losing at most {self.config.max_domain_loss:.0%} "
                f"of the domain-probe gain ({self.allow:.4f} nats/token)"
            )
        return f"reach general-probe recovery ≥ {self.config.probe_recovery:g}, keeping the most domain gain"

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
        return self.config.probe_recovery - self.recovered(r)

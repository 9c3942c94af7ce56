"""The restoration plan: for every tensor, how far the merge moves the adapted weights back toward the base.

`t` is the **weight of the base model** everywhere in spear-mm: t = 0 keeps the adapted tensor, t = 1 is the
base tensor exactly (the layer behaves as if it had been frozen during CPT). Plans are plain YAML files that
users review and edit; unknown keys, unregistered methods and out-of-range values are errors that name the line.

A plan names its merge methods; the methods themselves (and their registry, `METHODS`) live in a later stage,
merging/methods/. `merge_methods()` imports that package by name on first use, so its built-ins (and any module
registered by being imported before) are the names a plan may use.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import inspect
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from spear_mm import __version__
from spear_mm.errors import SpearError, field_errors, read_text
from spear_mm.io.architecture import ParamInfo
from spear_mm.io.files import atomic_write_text

T = Annotated[float, Field(ge=0.0, le=1.0)]
METHODS_PACKAGE = "spear_mm.merging.methods"  # importing it registers the built-in merge methods


def _option_default(method: Any, name: str) -> Any:
    """The default a method's constructor gives option `name` (None: it does not take it, or has no default)."""
    param = inspect.signature(method.__init__).parameters.get(name)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def _same_kind(value: Any, default: Any) -> bool:
    """A plan's option value of the kind of the method's default: a number for a number, a bool for a bool, …"""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def merge_methods() -> dict[str, Any]:
    """The registered merge method classes by name (merging/methods/: `MergeMethod` subclasses with `@register`)."""
    return importlib.import_module(METHODS_PACKAGE).METHODS


def registered_method(name: str) -> str:
    """`name` if a merge method of that name is registered, else ValueError listing the registered ones."""
    if name not in merge_methods():
        raise ValueError(
            f"unknown merge method {name!r}: the registered methods are {', '.join(merge_methods())} "
            "(spear-mm ls methods)"
        )
    return name


Method = Annotated[str, AfterValidator(registered_method)]  # a registered merge method's name
UNIT_IDS = re.compile(r"^(layer\.\d+(\.(attn|mlp))?|embed|head|final_norm|other)$")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LayerRule(_Strict):
    """Restoration of one transformer layer; `modules` overrides t per module type (e.g. `attn.q: 1.0`)."""

    layer: Annotated[int, Field(ge=0)]
    t: T = 0.0
    modules: dict[str, T] = Field(default_factory=dict)
    score: float | None = None  # impact score the plan came from (informational)
    rank: int | None = None  # 1 = most damaging drift (informational)

    @property
    def action(self) -> str:
        return "keep" if self.t == 0 and not self.modules else "base" if self.t == 1 else "restore"


class UnitInfo(_Strict):
    """Score and rank (among all units, layers included) of a unit outside the blocks (informational)."""

    score: float | None = None
    rank: int | None = None


class UnitEffect(_Strict):
    """Measured effect of restoring one unit alone at SLERP factor t (probe NLL differences, nats/token)."""

    unit: str
    t: float
    general_recovered: float  # NLL_general(adapted) − NLL_general(unit restored): > 0 helps
    domain_lost: float  # NLL_domain(unit restored) − NLL_domain(adapted): > 0 costs domain gain


class Measurement(_Strict):
    """What the measured planner saw on its probes, and what it spent (informational, for the report)."""

    general_probe: str
    domain_probe: str
    general_tokens: int
    domain_tokens: int
    nll_general: dict[str, float]  # base, adapted, plan
    nll_domain: dict[str, float]
    objective: str
    evaluations: int  # probe evaluations run (a cached evaluation is not counted)
    cached: int = 0
    budget: int = 0  # evaluations allowed for the black-box refinement
    seconds: float = 0.0
    greedy: dict[str, float] = Field(default_factory=dict)  # the knapsack plan (unit → t) before refinement
    effects: list[UnitEffect] = Field(default_factory=list)


class Provenance(_Strict):
    """Where a plan came from, so a merge can be traced back to its scores and policy."""

    policy: str = "manual"
    params: dict[str, float | int | str | bool | None] = Field(default_factory=dict)
    scores_hash: str | None = None
    base: str | None = None
    adapted: str | None = None
    base_hub: str | None = None  # 'org/name@<commit>' when the model came from the hub cache
    adapted_hub: str | None = None
    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    spear_mm_version: str = __version__


class Plan(_Strict):
    """What the merge does to every tensor. Layers not listed keep the adapted weights (t = `default_t`)."""

    spear_mm_plan: Literal[1] = 1
    method: Method = "slerp"
    density: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0  # `ties`: fraction of |ΔW| entries kept per tensor
    shrink: Annotated[float, Field(ge=0.0, le=1.0)] = 0.9  # `regmean`: scale of the Grams' off-diagonal entries
    statistics: str | None = None  # `regmean`/`fisher`: the statistics folder (spear-mm stats; merge --stats)
    unit_methods: dict[str, Method] = Field(
        default_factory=dict
    )  # per-unit method ('layer.3', 'layer.3.attn', 'embed')
    # options a method class declares beyond the fields above (`MergeMethod.options`), e.g. {gain: 0.5}
    method_options: dict[str, float | int | str | bool] = Field(default_factory=dict)
    num_layers: Annotated[int, Field(ge=1)]
    default_t: T = 0.0
    layers: list[LayerRule] = Field(default_factory=list)
    embed: T = 0.0
    head: T = 0.0
    final_norm: T = 0.0
    other: T = 0.0
    layer_norms: Literal["follow", "keep", "base"] = "follow"
    units: dict[str, UnitInfo] = Field(default_factory=dict)  # score/rank of embed, head, final_norm (info)
    measurement: Measurement | None = None  # the measured planner's probe figures (info)
    provenance: Provenance = Field(default_factory=Provenance)

    @model_validator(mode="after")
    def _check_layers(self) -> Plan:
        seen: set[int] = set()
        for rule in self.layers:
            if rule.layer >= self.num_layers:
                raise ValueError(f"layer {rule.layer} is out of range: the model has {self.num_layers} layers")
            if rule.layer in seen:
                raise ValueError(f"layer {rule.layer} is listed twice")
            seen.add(rule.layer)
        for unit in self.unit_methods:
            if not UNIT_IDS.match(unit) or (unit.startswith("layer.") and int(unit.split(".")[1]) >= self.num_layers):
                raise ValueError(
                    f"unit_methods: '{unit}' is not a unit of a {self.num_layers}-layer model "
                    "(layer.N, layer.N.attn, layer.N.mlp, embed, head, final_norm, other)"
                )
        declared = {o for m in self.methods() for o in merge_methods()[m].options} - set(type(self).model_fields)
        unknown = sorted(set(self.method_options) - declared)
        if unknown:
            raise ValueError(
                f"method_options: {', '.join(unknown)} is not an option of {', '.join(sorted(self.methods()))} "
                f"(their options: {', '.join(sorted(declared)) or 'none'}; density and shrink are top-level keys)"
            )
        for name, value in self.method_options.items():
            for m in self.methods():
                default = _option_default(merge_methods()[m], name)
                if default is not None and not _same_kind(value, default):
                    raise ValueError(
                        f"method_options.{name}: {value!r} is not a {type(default).__name__} like the default of "
                        f"{m} ({default!r})"
                    )
        return self

    # -- per-tensor resolution ---------------------------------------------------------------------------------
    def layer_t(self, layer: int) -> float:
        rule = self._rules().get(layer)
        return self.default_t if rule is None else rule.t

    def t_for(self, p: ParamInfo) -> float:
        """The SLERP factor (weight of the base) this plan gives one tensor."""
        if p.group == "layer" and p.layer is not None:
            rule = self._rules().get(p.layer)
            if rule is not None and p.module in rule.modules:
                return rule.modules[p.module]
            if p.module == "norm" and self.layer_norms != "follow":
                return 0.0 if self.layer_norms == "keep" else 1.0
            return self.layer_t(p.layer)
        return {"embed": self.embed, "head": self.head, "final_norm": self.final_norm}.get(p.group, self.other)

    def method_for(self, p: ParamInfo) -> Method:
        """The merge method of one tensor: its sub-layer's, layer's or unit's entry in `unit_methods`, else `method`."""
        if not self.unit_methods:
            return self.method
        if p.group == "layer" and p.layer is not None:
            half = "attn" if p.module.startswith("attn") else "mlp"
            keys = (f"layer.{p.layer}.{half}", f"layer.{p.layer}")
        else:
            keys = (p.group if p.group in ("embed", "head", "final_norm") else "other",)
        return next((self.unit_methods[k] for k in keys if k in self.unit_methods), self.method)

    def methods(self) -> set[str]:
        """Every merge method the plan uses."""
        return {self.method, *self.unit_methods.values()}

    def needs_statistics(self) -> bool:
        """Whether a method of the plan reads the probe statistics of `spear-mm stats` (regmean, fisher)."""
        return any(merge_methods()[m].needs_statistics for m in self.methods())

    def option_values(self, names: tuple[str, ...]) -> dict[str, object]:
        """The values this plan sets for these method options: a top-level field (density, shrink) or an entry
        of `method_options` (an option the plan leaves out keeps the method's own default)."""
        fields = type(self).model_fields
        values = {n: getattr(self, n) for n in names if n in fields}
        return values | {n: self.method_options[n] for n in names if n in self.method_options}

    def uses_option(self, field: str) -> bool:
        """Whether the plan's own `method` reads this plan field as an option (e.g. `density` for ties)."""
        return field in merge_methods()[self.method].options

    def unit_t(self, unit: str) -> float:
        """t of a unit id ('layer.3', 'embed', 'head', 'final_norm', 'other'; a sub-layer 'layer.3.attn' or
        'layer.3.mlp' has the largest module override of that half, or the layer's t)."""
        if unit.startswith("layer."):
            _, layer, *half = unit.split(".")
            rule = self._rules().get(int(layer))
            overrides = [v for k, v in (rule.modules if rule else {}).items() if half and k.startswith(half[0])]
            return max(overrides) if overrides else self.layer_t(int(layer))
        return {"embed": self.embed, "head": self.head, "final_norm": self.final_norm}.get(unit, self.other)

    def with_unit_ts(self, ts: dict[str, float]) -> Plan:
        """A copy with these units' t replaced (layer module overrides of those layers are dropped)."""
        rules = self._rules()
        layers = []
        for i in sorted(set(rules) | {int(u.split(".")[1]) for u in ts if u.startswith("layer.")}):
            rule = rules.get(i, LayerRule(layer=i))
            if f"layer.{i}" in ts:
                rule = rule.model_copy(update={"t": float(ts[f"layer.{i}"]), "modules": {}})
            layers.append(rule)
        update = {k: float(v) for k, v in ts.items() if k in ("embed", "head", "final_norm", "other")}
        return Plan.model_validate(self.model_copy(update={"layers": layers, **update}).model_dump())

    def _rules(self) -> dict[int, LayerRule]:
        return {r.layer: r for r in self.layers}

    def layer_ts(self) -> list[float]:
        return [self.layer_t(i) for i in range(self.num_layers)]

    def restored_layers(self) -> list[int]:
        """Layers whose weights move toward the base at all (t > 0 or any module override > 0)."""
        rules = self._rules()
        return [
            i
            for i in range(self.num_layers)
            if self.layer_t(i) > 0 or any(v > 0 for v in getattr(rules.get(i), "modules", {}).values())
        ]

    def frozen_layers(self) -> list[int]:
        """Layers restored fully (t = 1): the equivalent of freezing them during CPT."""
        return [
            i
            for i in range(self.num_layers)
            if self.layer_t(i) == 1.0 and not self._rules().get(i, LayerRule(layer=i)).modules
        ]

    def summary(self) -> str:
        restored = self.restored_layers()
        parts = [f"{self.method}", f"{len(restored)}/{self.num_layers} layers restored"]
        if restored:
            parts.append(
                ", ".join(f"L{i}:t={self.layer_t(i):g}" for i in restored[:12]) + (" …" if len(restored) > 12 else "")
            )
        parts.append(f"embed t={self.embed:g}, head t={self.head:g}, final_norm t={self.final_norm:g}")
        return "; ".join(parts)

    # -- constructors ------------------------------------------------------------------------------------------
    @classmethod
    def uniform(
        cls, t: float, num_layers: int, *, include_non_layers: bool = False, method: Method = "slerp", **kw
    ) -> Plan:
        """Same t for every layer (WiSE-FT-style); embeddings/head/final norm too if `include_non_layers`."""
        extra = dict(embed=t, head=t, final_norm=t, other=t) if include_non_layers else {}
        return cls(
            num_layers=num_layers,
            method=method,
            default_t=t,
            provenance=kw.pop("provenance", Provenance(policy="uniform", params={"t": t})),
            **extra,
            **kw,
        )

    @classmethod
    def from_layer_list(cls, ts: list[float], **kw) -> Plan:
        """One t per layer, in order."""
        layers = [LayerRule(layer=i, t=t) for i, t in enumerate(ts)]
        return cls(
            num_layers=len(ts),
            layers=layers,
            provenance=kw.pop("provenance", Provenance(policy="custom")),
            **kw,
        )

    # -- YAML --------------------------------------------------------------------------------------------------
    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude_none=True)
        data["layers"] = [{k: v for k, v in r.items() if not (k == "modules" and not v)} for r in data["layers"]]
        if not data["method_options"]:
            del data["method_options"]
        header = (
            "# spear-mm restoration plan. t = weight of the BASE model: 0 keeps the adapted weights,\n"
            "# 1 restores the base exactly (as if the layer had been frozen during CPT).\n"
        )
        return header + yaml.safe_dump(data, sort_keys=False, width=110)

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.to_yaml())

    @classmethod
    def from_yaml(cls, text: str, source: str = "<plan>") -> Plan:
        try:
            node = yaml.compose(text)
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpearError(f"{source}: not valid YAML ({exc}).") from exc
        if not isinstance(data, dict):
            raise SpearError(f"{source}: a plan is a YAML mapping with at least `num_layers`.")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            lines = []
            for err in field_errors(exc):
                line = _line_of(node, err.loc)
                where = f"line {line}, " if line else ""
                lines.append(f"{where}field '{err.field or '(top level)'}': {err.msg}")
            raise SpearError(
                f"{source}: invalid plan — "
                + "; ".join(lines)
                + ". Fix the field (t must be in [0, 1]; the allowed keys are listed in docs/merge.md)."
            ) from exc

    @classmethod
    def load(cls, path: str | Path) -> Plan:

        path = Path(path)
        if not path.exists():
            raise SpearError(f"{path}: plan file not found.")
        return cls.from_yaml(read_text(path, "plan"), source=str(path))


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """1-based line of the YAML node at a pydantic error location (best effort)."""
    line = None
    for key in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if k.value == str(key):
                    line, nxt = k.start_mark.line + 1, v
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            node = None
    if node is not None:
        line = node.start_mark.line + 1
    return line

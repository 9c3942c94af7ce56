"""`spear-mm plan validate`: check a plan against one model's tensor names, without merging.

What `merge --dry-run` needs two models for, done with one: the plan's layer count against the model's, every
per-module override against the module types the model really has, and what the plan does to each group
of tensors (how many are kept, interpolated or restored), so a plan written for another model or with a
misspelt module name is caught before anything is read or written.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from spear_mm.errors import SpearError
from spear_mm.io.architecture import layer_map, num_layers_of
from spear_mm.io.checkpoint import Checkpoint
from spear_mm.planning.plan import Plan


@dataclass
class PlanCheck:
    """The outcome of a validation: tensor counts per (group, action), and notes that are not errors."""

    model: str
    num_layers: int
    tensors: int
    actions: Counter = field(default_factory=Counter)  # (group, action) -> tensors
    notes: list[str] = field(default_factory=list)


def _action(t: float) -> str:
    return "keep" if t == 0.0 else "base" if t == 1.0 else "merge"


def validate_plan(plan: Plan, ckpt: Checkpoint, source: str = "plan") -> PlanCheck:
    """Raise SpearError naming the first mismatch between `plan` and the model `ckpt`; else a `PlanCheck`."""
    params = layer_map(ckpt.names, ckpt.model_type)
    layers = num_layers_of(ckpt.config) or 1 + max(p.layer for p in params.values() if p.layer is not None)
    if plan.num_layers != layers:
        raise SpearError(
            f"{source}: the plan is for {plan.num_layers} layers but {ckpt.path} has {layers}; make the plan from "
            "this model's scores (spear-mm analyze, then spear-mm plan)."
        )
    modules = sorted({p.module for p in params.values() if p.group == "layer"})
    for rule in plan.layers:
        unknown = sorted(set(rule.modules) - set(modules))
        if unknown:
            raise SpearError(
                f"{source}: layer {rule.layer} overrides module(s) {', '.join(map(repr, unknown))}, which "
                f"{ckpt.path} does not have; its module types are {', '.join(modules)}. Fix the names under "
                f"`modules:` of layer {rule.layer}."
            )
    check = PlanCheck(str(ckpt.path), layers, len(params))
    for name, p in params.items():
        floating = ckpt.infos[name].dtype.is_floating_point
        check.actions[(p.group, _action(plan.t_for(p)) if floating else "keep")] += 1
    dims = Counter(len(ckpt.infos[n].shape) for n, p in params.items() if p.group == "other")
    if dims:
        check.notes.append(
            f"{sum(dims.values())} tensor(s) outside the known groups follow `other: {plan.other:g}`"
            " (see spear-mm inspect)."
        )
    prov = plan.provenance
    fingerprint = ckpt.fingerprint()
    if prov.adapted and prov.base and fingerprint not in (prov.adapted, prov.base):
        check.notes.append(
            f"the plan's provenance names other checkpoints (base {prov.base}, adapted {prov.adapted}; this "
            f"model is {fingerprint}): fine for a plan reused on a re-trained model, otherwise check the pair."
        )
    return check

"""Plan exports: a mergekit config that performs the plan's merge, and a Spectrum-style freeze list for the next
CPT run (the layers the plan restores fully stay frozen)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import yaml

from spear_mm.errors import SpearError
from spear_mm.io.architecture import ParamInfo, for_model_type, layer_map
from spear_mm.io.checkpoint import Checkpoint
from spear_mm.io.hub import hub_label
from spear_mm.planning.freeze import YAML_KEY, FreezeSummary, apply_freeze, freeze_patterns, write_freeze_yaml
from spear_mm.planning.plan import Plan, merge_methods

log = logging.getLogger(__name__)


# -- mergekit --------------------------------------------------------------------------------------------------------
def _tensor_names(adapted_path: str | Path) -> tuple[dict[str, ParamInfo], str]:
    """Tensor classification of the adapted model, read from its headers (the export needs the real names)."""
    try:
        ckpt = Checkpoint.open(adapted_path)
    except SpearError as exc:
        raise SpearError(
            f"the mergekit export names the adapted model's tensors, so it reads them from {adapted_path}: {exc} "
            "Run the export where the adapted folder is readable (the paths in the config are written as given)."
        ) from exc
    return layer_map(ckpt.names, ckpt.model_type), ckpt.model_type


def _layer_suffixes(params: dict[str, ParamInfo], model_type: str) -> dict[str, set[str]]:
    """module type -> name parts after the layer prefix (e.g. attn.q -> {'self_attn.q_proj'})."""
    rx = for_model_type(model_type).layer_re
    out: dict[str, set[str]] = {}
    for p in params.values():
        if p.group == "layer" and (m := rx.search(p.name)):
            out.setdefault(p.module, set()).add(re.sub(r"\.(weight|bias)$", "", p.name[m.end() :]))
    return out


def to_mergekit_config(
    plan: Plan, base_path: str | Path, adapted_path: str | Path, *, dtype: str | None = None
) -> dict:
    """A mergekit config that performs this plan's merge, in the form its method class gives (`mergekit`,
    `mergekit_slice`, `mergekit_parameters`: SLERP, or LERP as mergekit's linear merge).

    mergekit's SLERP `t` weighs the model that is NOT `base_model`; with `base_model` = the adapted model
    and the other source = the base, mergekit's t equals spear-mm's t. A uniform plan is one slice with scalar
    values. Otherwise every layer gets its own one-layer slice with scalar values, so nothing depends on how
    mergekit samples a list (a "gradient") over a slice. Non-layer tensors get explicit
    values in every rule set (mergekit takes them from the first/last slice). Filters are substrings of tensor
    names, the first match wins.
    """
    for method in sorted(plan.methods()):  # per-unit methods too: a regmean unit has no mergekit form
        check_mergekit(method)
    params, model_type = _tensor_names(adapted_path)
    n = plan.num_layers
    fixed: list[dict] = [
        {"filter": p.name, "value": round(plan.t_for(p), 6)}
        for p in params.values()
        if p.group in ("embed", "head", "final_norm")
    ]
    if not any(p.group == "head" for p in params.values()):  # tied head: mergekit may still list lm_head
        fixed.append({"filter": "lm_head", "value": round(plan.head, 6)})
    overrides = {m for r in plan.layers for m in r.modules}
    modules = sorted(overrides | ({"norm"} if plan.layer_norms != "follow" else set()))
    suffixes = _layer_suffixes(params, model_type)

    def layer_rules(i: int) -> list[dict]:
        rules = [
            {"filter": suffix, "value": round(plan.t_for(ParamInfo(f"layers.{i}.x", "layer", i, module)), 6)}
            for module in modules
            for suffix in sorted(suffixes.get(module, ()))
        ]
        return [*fixed, *rules, {"value": round(plan.layer_t(i), 6)}]

    per_layer = [layer_rules(i) for i in range(n)]
    ranges = [(0, n)] if all(r == per_layer[0] for r in per_layer) else [(i, i + 1) for i in range(n)]
    adapted, base = model_ref(adapted_path), model_ref(base_path)
    method = merge_methods()[plan.method]
    slices = [
        method.mergekit_slice(
            [{"model": adapted, "layer_range": [lo, hi]}, {"model": base, "layer_range": [lo, hi]}], per_layer[lo]
        )
        for lo, hi in ranges
    ]
    config: dict = {"slices": slices, "base_model": adapted, "merge_method": method.mergekit}
    config["parameters"] = method.mergekit_parameters(fixed, plan.other)
    if dtype:
        config["dtype"] = dtype
    return config


def check_mergekit(method: str) -> None:
    """Refuse a plan method mergekit cannot perform (its class declares no `mergekit` form; called before
    anything is written). The message lists the registered methods that do export."""
    if merge_methods()[method].mergekit is None:
        exportable = [n for n, m in merge_methods().items() if m.mergekit is not None]
        raise SpearError(
            f"the mergekit export supports {' and '.join(exportable)} plans, not '{method}': mergekit has no "
            f"per-unit {method} merge toward the base. Merge with `spear-mm merge --plan`, or make the plan with "
            "--method slerp for the export; nothing was written."
        )


def model_ref(path: str | Path) -> str:
    """How the export names a model: `org/name@<commit>` for a hub cache snapshot (mergekit fetches that
    revision on any machine), else the path as given."""
    return hub_label(path) or str(Path(path))


class _NoAliases(yaml.SafeDumper):
    """Repeated rule lists written out in full: anchors (`&id001`) make an export unreadable."""

    def ignore_aliases(self, data) -> bool:
        return True


def mergekit_yaml(plan: Plan, base_path: str | Path, adapted_path: str | Path, **kw) -> str:
    header = f"# mergekit config exported by spear-mm: {plan.summary()}\n"
    config = to_mergekit_config(plan, base_path, adapted_path, **kw)
    return header + yaml.dump(config, Dumper=_NoAliases, sort_keys=False, width=1000)


# -- freeze list -------------------------------------------------------------------------------------------------
def freeze_patterns_for_plan(plan: Plan, names: list[str] | None = None, model_type: str = "llama") -> list[str]:
    """Regexes of the parameters that train in the next CPT run: everything the plan does not restore fully.

    Without `names`: compact layer patterns (layers with t = 1 frozen). With `names`: one anchored pattern
    per trainable tensor (Spectrum style), honouring per-module overrides and layer-norm rules too.
    """
    if names is None:
        return freeze_patterns(
            plan.frozen_layers(),
            freeze_embeddings=plan.embed == 1.0,
            freeze_head=plan.head == 1.0,
            freeze_final_norm=plan.final_norm == 1.0,
        )
    params = layer_map(names, model_type)
    return ["^" + n.replace(".", "[.]") + "$" for n in names if plan.t_for(params[n]) < 1.0]


def to_freeze_yaml(plan: Plan, names: list[str] | None = None, model_type: str = "llama") -> str:
    """Spectrum-style YAML (`unfrozen_parameters:`) for re-running CPT with the fully restored layers frozen."""
    head = f"# spear-mm freeze list from a plan ({plan.summary()}).\n# Layers frozen: {plan.frozen_layers()}\n"
    patterns = freeze_patterns_for_plan(plan, names, model_type)
    return head + yaml.safe_dump({YAML_KEY: patterns}, sort_keys=False, width=1000)


def write_freeze_plan(plan: Plan, path: str | Path, names: list[str] | None = None, model_type: str = "llama") -> Path:
    comment = f"from a spear-mm plan ({plan.summary()})\nlayers frozen: {plan.frozen_layers()}"
    return write_freeze_yaml(path, freeze_patterns_for_plan(plan, names, model_type), comment)


def apply_freeze_plan(model, plan: Plan) -> FreezeSummary:
    """Freeze (requires_grad=False) every parameter the plan restores fully (t = 1); the rest trains."""
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", None)
    if layers is not None and layers != plan.num_layers:
        raise SpearError(f"the plan is for {plan.num_layers} layers, the model has {layers}.")
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    model_type = getattr(config, "model_type", "llama")
    summary = apply_freeze(model, freeze_patterns_for_plan(plan, names, model_type))
    log.info("freeze from plan: %s", summary)
    return summary

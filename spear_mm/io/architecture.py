"""Tensor name -> (layer index, module type), from per-family data in `_data/architectures.json`.

Module types use one vocabulary across families (`attn.q`, `attn.k`, `attn.v`, `attn.o`, `attn.qkv`,
`mlp.gate`, `mlp.up`, `mlp.down`, `mlp.gate_up`, `norm`), and every tensor falls in one group:
`layer` (inside transformer block N), `embed`, `head`, `final_norm` or `other`.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal

from spear_mm.errors import SpearError

log = logging.getLogger(__name__)

Group = Literal["layer", "embed", "head", "final_norm", "other"]


@dataclass(frozen=True)
class ParamInfo:
    """What a tensor is: its group, its layer (for `layer` tensors) and its module type."""

    name: str
    group: Group
    layer: int | None = None
    module: str = "other"

    @property
    def is_norm(self) -> bool:
        return self.module == "norm" or self.group == "final_norm"


@dataclass(frozen=True)
class Architecture:
    """Compiled name rules of one model family."""

    family: str
    layer_re: re.Pattern
    module_res: tuple[tuple[re.Pattern, str], ...]
    embed_res: tuple[re.Pattern, ...]
    head_res: tuple[re.Pattern, ...]
    final_norm_res: tuple[re.Pattern, ...]
    generic: bool = False

    def classify(self, name: str) -> ParamInfo:
        """Classify one tensor name."""
        m = self.layer_re.search(name)
        if m:
            rest = name[m.end() :]
            module = next((mod for rx, mod in self.module_res if rx.search(rest)), None)
            if module is None:
                module = re.sub(r"\.(weight|bias)$", "", rest) or "other"
            return ParamInfo(name, "layer", int(m.group(1)), module)
        for group, regexes in (
            ("embed", self.embed_res),
            ("head", self.head_res),
            ("final_norm", self.final_norm_res),
        ):
            if any(rx.search(name) for rx in regexes):
                return ParamInfo(name, group, None, "norm" if group == "final_norm" else group)
        return ParamInfo(name, "other", None, "other")

    def classify_all(self, names: list[str]) -> dict[str, ParamInfo]:
        return {n: self.classify(n) for n in names}


@cache
def _table() -> dict:
    return json.loads(resources.files("spear_mm").joinpath("_data/architectures.json").read_text())


def _compile(family: str, spec: dict, generic: bool = False) -> Architecture:
    return Architecture(
        family=family,
        layer_re=re.compile(spec["layer"]),
        module_res=tuple((re.compile(rx), mod) for rx, mod in spec["modules"].items()),
        embed_res=tuple(re.compile(rx) for rx in spec["embed"]),
        head_res=tuple(re.compile(rx) for rx in spec["head"]),
        final_norm_res=tuple(re.compile(rx) for rx in spec["final_norm"]),
        generic=generic,
    )


def known_model_types() -> list[str]:
    return sorted(t for f in _table()["families"].values() for t in f["model_types"])


def for_model_type(model_type: str) -> Architecture:
    """The rules for a `config.json` model_type; unknown types get the generic rules with a warning."""
    for family, spec in _table()["families"].items():
        if model_type in spec["model_types"]:
            return _compile(family, spec)
    log.warning(
        "model_type '%s' is not in spear-mm's architecture table; using generic rules (layers.N / h.N / "
        "blocks.N). Check `spear-mm inspect` and add the family to spear_mm/_data/architectures.json.",
        model_type,
    )
    return _compile(f"generic:{model_type}", _table()["generic"], generic=True)


def num_layers_of(config: dict) -> int | None:
    """Number of transformer blocks declared by a HF config (text config for multimodal models)."""
    cfg = config.get("text_config", config)
    for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        if isinstance(cfg.get(key), int):
            return cfg[key]
    return None


def layer_map(names: list[str], model_type: str) -> dict[str, ParamInfo]:
    """Classify every tensor; error when no transformer layer is recognised at all."""
    arch = for_model_type(model_type)
    infos = arch.classify_all(names)
    if not any(i.group == "layer" for i in infos.values()):
        sample = ", ".join(names[:5])
        raise SpearError(
            f"No transformer layers recognised in this '{model_type}' model (family rules: {arch.family}; "
            f"first tensors: {sample}). Add the family's name patterns to spear_mm/_data/architectures.json "
            "(a 'layer' regex whose group 1 is the index, plus module patterns); see docs/architecture.md."
        )
    return infos

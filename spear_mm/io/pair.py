"""A base/adapted pair, validated before any work: same family, tensors, shapes and dtypes (up to an allowed
vocabulary extension), with every difference reported at once and config changes that alter the computation noted."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spear_mm.errors import SpearError
from spear_mm.io.architecture import layer_map, num_layers_of
from spear_mm.io.checkpoint import Checkpoint

log = logging.getLogger(__name__)


_CONFIG_KEYS = (
    ("model_type",),
    ("num_hidden_layers", "n_layer", "num_layers"),
    ("hidden_size", "n_embd", "d_model"),
)


@dataclass
class Pair:
    """A validated base/adapted pair: same family, tensors and shapes (up to an allowed vocabulary extension)."""

    base: Checkpoint
    adapted: Checkpoint
    params: dict  # name -> architecture.ParamInfo, in the adapted model's tensor order
    num_layers: int
    vocab_extension: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (base rows, adapted rows)
    dtype_mismatch: dict[str, tuple[torch.dtype, torch.dtype]] = field(default_factory=dict)
    config_differences: list[str] = field(default_factory=list)  # e.g. "rope_theta: base 10000.0 vs adapted …"

    @property
    def names(self) -> list[str]:
        return list(self.params)


def _cfg(config: dict, keys: tuple[str, ...]):
    cfg = config.get("text_config", config) if keys[0] != "model_type" else config
    return next((cfg[k] for k in keys if k in cfg), None)


def open_pair(
    base: str | Path | Checkpoint, adapted: str | Path | Checkpoint, *, allow_vocab_extension: bool = False
) -> Pair:
    """Open and validate a base/adapted pair, reporting every difference at once."""

    b = base if isinstance(base, Checkpoint) else Checkpoint.open(base)
    a = adapted if isinstance(adapted, Checkpoint) else Checkpoint.open(adapted)
    problems: list[str] = []
    for keys in _CONFIG_KEYS:
        vb, va = _cfg(b.config, keys), _cfg(a.config, keys)
        if vb != va:
            problems.append(f"config {keys[0]}: base {vb!r} vs adapted {va!r}")
    if problems:
        raise SpearError(
            f"{b.path} and {a.path} are not the same architecture ({'; '.join(problems)}). "
            "SPEAR-MM merges a model with its own continually pre-trained version; pass that pair."
        )
    params = layer_map(a.names, a.model_type)
    only_b = [n for n in b.infos if n not in a.infos]
    only_a = [n for n in a.infos if n not in b.infos]
    for n in only_b:
        problems.append(f"'{n}' is in the base ({b.infos[n].file.name}) but missing from the adapted model")
    for n in only_a:
        problems.append(f"'{n}' is in the adapted model ({a.infos[n].file.name}) but missing from the base")
    vocab_ext: dict[str, tuple[int, int]] = {}
    for n in a.infos.keys() & b.infos.keys():
        sb, sa = b.infos[n].shape, a.infos[n].shape
        if sb == sa:
            continue
        grows = params[n].group in ("embed", "head") and len(sa) == len(sb) == 2 and sa[1] == sb[1] and sa[0] > sb[0]
        if grows and allow_vocab_extension:
            vocab_ext[n] = (sb[0], sa[0])
        elif grows:
            problems.append(
                f"'{n}' has {sa[0]} rows in the adapted model vs {sb[0]} in the base (vocabulary "
                "extension); pass --allow-vocab-extension to merge the shared rows and keep the new ones"
            )
        else:
            problems.append(f"'{n}' has shape {list(sa)} in the adapted model vs {list(sb)} in the base")
    if problems:
        shown = problems[:20] + ([f"… and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise SpearError(
            f"{b.path} and {a.path} do not match tensor for tensor ({len(problems)} problem(s)): "
            + "; ".join(shown)
            + "."
        )
    mismatch = {n: (b.infos[n].dtype, a.infos[n].dtype) for n in a.infos if b.infos[n].dtype != a.infos[n].dtype}
    if mismatch:
        n, (db, da) = next(iter(mismatch.items()))
        log.warning(
            "%d tensor(s) differ in dtype (e.g. '%s': base %s, adapted %s); they are merged in float32 "
            "and written in the adapted model's dtype.",
            len(mismatch),
            n,
            db,
            da,
        )
    num_layers = num_layers_of(a.config) or 1 + max(
        (p.layer for p in params.values() if p.layer is not None), default=0
    )
    differences = config_differences(b.config, a.config)
    if differences:
        log.warning(
            "%s and %s: the configs differ in what the weights mean (%s); the merged model uses the adapted "
            "config. Check that this is intended (e.g. a context extension changed rope_theta during CPT).",
            b.path,
            a.path,
            "; ".join(differences),
        )
    return Pair(b, a, params, num_layers, vocab_ext, mismatch, differences)


# Config fields that change what the same weights compute: a difference is warned about (and noted by merges).
_SEMANTIC_KEYS = (
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "max_position_embeddings",
    "rms_norm_eps",
    "layer_norm_eps",
    "layer_norm_epsilon",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "sliding_window",
    "partial_rotary_factor",
    "tie_word_embeddings",
)


def config_differences(base: dict, adapted: dict) -> list[str]:
    """`key: base X vs adapted Y` for every semantic config field that differs (text_config too)."""
    cb, ca = base.get("text_config", base), adapted.get("text_config", adapted)
    return [f"{k}: base {cb.get(k)!r} vs adapted {ca.get(k)!r}" for k in _SEMANTIC_KEYS if cb.get(k) != ca.get(k)]

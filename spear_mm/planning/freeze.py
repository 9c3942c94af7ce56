"""Freezing for CPT re-runs: Spectrum-style `unfrozen_parameters:` YAML and `requires_grad` from it.

A parameter trains iff one of the regexes *matches* its name (`re.search`; an alias of a tied parameter
counts). The patterns this module writes are start-anchored and use `[.]` for a literal dot and
`[^ ]*` for "any prefix", so they mean the same under `re.search`, `re.match` and axolotl's Spectrum
reader (which rewrites every `.` to `\\.` before matching from the start).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from spear_mm.errors import SpearError, read_text
from spear_mm.io.files import atomic_write_text

log = logging.getLogger(__name__)

LAYER_INDEX_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")
LAYER_PREFIX = r"^([^ ]*[.])?(layers|h|blocks)[.]"
# Non-layer parameter groups (names from spear_mm/_data/architectures.json), matched after any prefix.
EMBED_NAMES = r"(embed_tokens|wte|wpe|embed_in|word_embeddings|tok_embeddings)"
HEAD_NAMES = r"(lm_head|embed_out|output)"
FINAL_NORM_NAMES = r"(norm|ln_f|final_layer_norm|final_layernorm|norm_f)"
YAML_KEY = "unfrozen_parameters"


@dataclass
class FreezeSummary:
    """What `apply_freeze` did: counts of unique parameters (elements) and tensors, frozen layer indices."""

    trainable_params: int = 0
    frozen_params: int = 0
    trainable_tensors: int = 0
    frozen_tensors: int = 0
    frozen_layers: list[int] = field(default_factory=list)
    unmatched_patterns: list[str] = field(default_factory=list)

    @property
    def total_params(self) -> int:
        return self.trainable_params + self.frozen_params

    def to_dict(self) -> dict:
        return asdict(self) | {"total_params": self.total_params}

    def __str__(self) -> str:
        share = self.trainable_params / max(self.total_params, 1)
        return (
            f"{self.trainable_params:,} of {self.total_params:,} parameters trainable ({share:.1%}; "
            f"{self.trainable_tensors} tensors), {self.frozen_tensors} tensors frozen; "
            f"frozen layers: {self.frozen_layers or 'none'}"
        )


def layer_index(name: str) -> int | None:
    """Transformer block index of a parameter name (`layers.N.`, `h.N.`, `blocks.N.`), else None."""
    m = LAYER_INDEX_RE.search(name)
    return int(m.group(1)) if m else None


def freeze_patterns(
    frozen_layers: Iterable[int],
    *,
    freeze_embeddings: bool = False,
    freeze_head: bool = False,
    freeze_final_norm: bool = False,
    layer_prefix_regex: str = LAYER_PREFIX,
) -> list[str]:
    """Regexes of the parameters that stay trainable: every layer but `frozen_layers`, and every
    non-layer parameter except the groups asked to freeze. Works without knowing the layer count."""
    frozen = sorted(set(frozen_layers))
    if any(not isinstance(i, int) or i < 0 for i in frozen):
        raise SpearError(f"freeze: layer indices must be non-negative integers, got {frozen}.")
    skip = f"(?!({'|'.join(map(str, frozen))})[.])" if frozen else ""
    layers = f"{layer_prefix_regex}{skip}[0-9]+[.]"
    anchored = layer_prefix_regex.startswith("^")
    in_layer = layer_prefix_regex[1:] if anchored else f"[^ ]*{layer_prefix_regex}"
    non_layer = f"^(?!{in_layer}[0-9]+[.])"
    for flag, names in ((freeze_embeddings, EMBED_NAMES), (freeze_head, HEAD_NAMES)):
        if flag:
            non_layer += f"(?!([^ ]*[.])?{names}[.])"
    if freeze_final_norm:
        non_layer += f"(?!([^ ]*[.])?{FINAL_NORM_NAMES}[.](weight|bias)$)"
    return [layers, non_layer]


def _compile(patterns: list[str], source: str) -> list[re.Pattern]:
    compiled = []
    for p in patterns:
        if not isinstance(p, str) or not p:
            raise SpearError(f"{source}: `{YAML_KEY}` entries must be non-empty strings, got {p!r}.")
        try:
            compiled.append(re.compile(p))
        except re.error as exc:
            raise SpearError(f"{source}: invalid regex {p!r} ({exc}); fix or quote the pattern.") from exc
    return compiled


def write_freeze_yaml(path: Path | str, unfrozen_patterns: list[str], comment: str | None = None) -> Path:
    """Write a Spectrum-style YAML (`unfrozen_parameters:` list); atomic. `comment` becomes a header."""
    path = Path(path)
    _compile(unfrozen_patterns, str(path))
    header = "# spear-mm freeze list: parameters matching a regex below train, all others are frozen.\n"
    if comment:
        header += "".join(f"# {line}\n" for line in comment.splitlines())
    text = header + yaml.safe_dump({YAML_KEY: list(unfrozen_patterns)}, sort_keys=False, width=1000)

    return atomic_write_text(path, text)


def is_freeze_yaml(data: object) -> bool:
    """True for a parsed YAML mapping that has the `unfrozen_parameters` key."""
    return isinstance(data, dict) and YAML_KEY in data


def load_freeze_yaml(path: Path | str) -> list[str]:
    """Read the `unfrozen_parameters` regexes of a freeze YAML (ours or Spectrum's); validates them."""
    path = Path(path)
    try:
        data = yaml.safe_load(read_text(path, "freeze file"))
    except OSError as exc:
        raise SpearError(f"{path}: cannot read the freeze file ({exc.strerror}).") from exc
    except yaml.YAMLError as exc:
        raise SpearError(f"{path}: not valid YAML ({exc}).") from exc
    if not is_freeze_yaml(data):
        hint = " (this is a spear-mm plan: use apply_freeze_plan)" if isinstance(data, dict) else ""
        raise SpearError(f"{path}: a freeze file is a YAML mapping with an `{YAML_KEY}:` list{hint}.")
    extra = sorted(set(data) - {YAML_KEY})
    if extra:
        raise SpearError(f"{path}: unknown keys {extra}; a freeze file has only `{YAML_KEY}:`.")
    patterns = data[YAML_KEY] or []
    if not isinstance(patterns, list):
        raise SpearError(f"{path}: `{YAML_KEY}` must be a list of regexes.")
    _compile(patterns, str(path))
    return patterns


def apply_freeze(model, unfrozen_patterns: list[str]) -> FreezeSummary:
    """Set `requires_grad` on every parameter of a torch module: True iff a pattern matches a name of it."""
    regexes = _compile(unfrozen_patterns, "freeze patterns")
    used: set[int] = set()
    for p, names in _aliases(model).values():
        hits = {i for i, rx in enumerate(regexes) for n in names if rx.search(n)}
        used |= hits
        p.requires_grad_(bool(hits))
    summary = summarize_freeze(model)
    summary.unmatched_patterns = [p for i, p in enumerate(unfrozen_patterns) if i not in used]
    if summary.unmatched_patterns:
        log.warning("freeze: patterns matching no parameter: %s", summary.unmatched_patterns)
    return summary


def summarize_freeze(model) -> FreezeSummary:
    """Counts of trainable/frozen parameters and tensors from the current `requires_grad` flags; a layer
    is frozen when none of its parameters trains."""
    summary = FreezeSummary()
    layer_trains: dict[int, bool] = {}
    for p, names in _aliases(model).values():
        if p.requires_grad:
            summary.trainable_params += p.numel()
            summary.trainable_tensors += 1
        else:
            summary.frozen_params += p.numel()
            summary.frozen_tensors += 1
        for layer in {layer_index(n) for n in names} - {None}:
            layer_trains[layer] = layer_trains.get(layer, False) or p.requires_grad
    summary.frozen_layers = sorted(i for i, trains in layer_trains.items() if not trains)
    return summary


def _aliases(model) -> dict[int, tuple]:
    """Unique parameters with all their names (tied weights have several)."""
    out: dict[int, tuple] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        out.setdefault(id(p), (p, []))[1].append(name)
    return out

"""What a merged folder holds besides the weights: the `MergeReport`, the model card, the adapted model's side
files (tokenizer, chat template, generation config; not its training logs) and the config's dtype."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from pydantic import BaseModel

from spear_mm import __version__
from spear_mm.io.hub import hub_label
from spear_mm.io.pair import Pair
from spear_mm.merging.streaming import TensorStat
from spear_mm.planning.plan import Plan

_WEIGHT_PATTERNS = (
    "*.safetensors",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.index.json",
    "*.gguf",
    "*.msgpack",
    "*.h5",
    "README.md",
    "merge_report.json",
    "plan.yaml",
)
# Files that describe the adapted model's training run (spear-mm cpt, HF Trainer): the merge never had it.
TRAINING_FILES = ("cost.json", "train_log.jsonl", "trainer_state.json", "training_args.bin", "all_results.json")


class MergeReport(BaseModel):
    base: str
    adapted: str
    base_fingerprint: str
    adapted_fingerprint: str
    output: str | None
    plan_summary: str
    method: str
    device: str
    threads: int
    seconds: float
    bytes_written: int
    n_tensors: int
    n_merged: int
    n_lerp_fallback: int
    notes: list[str] = []
    out_dtype: str | None = None  # --out-dtype; None: each tensor in the adapted model's dtype
    base_hub: str | None = None  # 'org/name@<commit>' when the model came from the Hugging Face hub cache
    adapted_hub: str | None = None
    tensors: list[TensorStat]
    spear_mm_version: str = __version__


def side_files(folder: Path) -> tuple[list[Path], list[str]]:
    """Config/tokenizer/generation files of the adapted model to copy, and notes on links that leave the folder
    (skipped: a link to e.g. /etc/hostname must not be copied into a model folder that may be published). In a
    hub cache snapshot every file links into the repository's `blobs/`: links that stay in that repository
    folder are copied (as the files they point at)."""
    files, notes = [], []
    root = link_root(folder)
    for src in sorted(folder.iterdir()):
        if any(src.match(p) for p in _WEIGHT_PATTERNS) or not src.is_file():
            continue
        if src.is_symlink() and root not in src.resolve().parents:
            notes.append(f"'{src.name}' in the adapted folder links outside it ({src.resolve()}); not copied.")
            continue
        files.append(src)
    return files, notes


def link_root(folder: Path) -> Path:
    """Where a model folder's links may lead: the folder, or for a hub snapshot (`models--org--name/snapshots/
    <commit>`) its repository folder `models--org--name` (snapshot files link to `../../blobs/<hash>`)."""
    resolved = folder.resolve()
    if resolved.parent.name == "snapshots" and resolved.parent.parent.name.startswith("models--"):
        return resolved.parent.parent
    return resolved


def set_config_dtype(config: Path, dtype: str) -> None:
    """Record the written dtype in config.json: the key(s) the adapted config has (`dtype` since transformers
    4.56, `torch_dtype` before), both when it has neither."""
    if not config.is_file():
        return
    data = json.loads(config.read_text())
    keys = [k for k in ("dtype", "torch_dtype") if k in data] or ["dtype", "torch_dtype"]
    for key in keys:
        data[key] = dtype
    config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def model_card(pair: Pair, plan: Plan, report: MergeReport) -> str:
    restored = plan.restored_layers()
    rows = "\n".join(f"| {i} | {plan.layer_t(i):g} |" for i in restored) or "| – | – |"
    fallback = f"{report.n_lerp_fallback} of {report.n_merged}" if report.n_merged else "0"
    notes = "".join(f"\nNote: {n}\n" for n in report.notes)
    parents = [_repo(pair.base.path), _repo(pair.adapted.path)]
    front = {
        "library_name": "transformers",
        "tags": ["spear-mm", "merge", plan.method],
        "base_model": list(dict.fromkeys(parents)),
        "base_model_relation": "merge",
    }
    return f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---
# {Path(report.output or "merged").name}

Merged with spear-mm {__version__} (SPEAR-MM: selective parameter evaluation and restoration via model
merging). Layers of the adapted model were moved back toward the base model by
{plan.method.upper()}; **t is the weight of the base** (0 = adapted weights kept, 1 = base restored).

| input | path | content hash (sampled) |
| --- | --- | --- |
| base | {_where(pair.base.path, report.base_hub)} | `{report.base_fingerprint}` |
| adapted | {_where(pair.adapted.path, report.adapted_hub)} | `{report.adapted_fingerprint}` |

Written in {report.out_dtype or "the adapted model's dtype"}. The adapted model's training records (`cost.json`,
`train_log.jsonl`) are left out: this folder's provenance is `plan.yaml`, `merge_report.json` and this card.

Plan: {plan.summary()} (policy `{plan.provenance.policy}`, scores `{plan.provenance.scores_hash or "–"}`).
Full plan in `plan.yaml`, per-tensor statistics in `merge_report.json`. SLERP fell back to LERP (|cos| > 0.9995)
on {fallback} interpolated tensors.
{notes}

| restored layer | t |
| --- | --- |
{rows}
"""


def _repo(path: Path) -> str:
    """The hub id a model came from (the card's `base_model`), else its folder's name: never a local path."""
    return (hub_label(path) or "").split("@")[0] or path.name


def _where(path: Path, hub: str | None) -> str:
    """Hub id and commit, or the folder's name: a card travels with the model, so no path of this machine."""
    return f"hub `{hub}`" if hub else f"local folder `{path.name}`"

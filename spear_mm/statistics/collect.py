"""Collect the statistics of a pair on its probes (`spear-mm stats`): input Gram matrices of every linear layer
in the transformer blocks (RegMean) and the diagonal Fisher of every parameter (Fisher merging).

The base model reads the general probe, the adapted model the domain probe (one model in memory at a time).
Grams are accumulated by forward pre-hooks in float32 on the model's device. Memory is bounded by
`max_gram_bytes`: the blocks' input sites are split into consecutive groups that fit, one pass over the probe per
group, each pass stopped as soon as the group's last site has read its input (a Llama-3.1-8B side at 16k tokens:
~33 GB of Grams, 17 passes of ≤ 2 GB; docs/scaling.md). Each group is written as soon as it is done, atomically
and tagged with the content key, so a cut collection resumes where it stopped and a changed probe is collected
anew.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from spear_mm.errors import SpearError
from spear_mm.io.files import atomic_write_text, content_key, temp_file, umask
from spear_mm.io.pair import Pair
from spear_mm.progress import ProgressCallback, ProgressEvent
from spear_mm.scoring.probes import check_probe_tokens, read_texts
from spear_mm.statistics.store import META, SIDES, Kind, ProbeInfo, Side, StatsMeta, file_key, read_meta

log = logging.getLogger(__name__)

WINDOW = 256  # tokens per forward window
DEFAULT_TOKENS = 4096  # per side; docs/results.md ("probe size") measured 1k / 4k / 16k
DEFAULT_GRAM_BYTES = 2 << 30  # Gram memory per pass


def windows_of(tokenizer, texts: list[str], max_tokens: int, window: int = WINDOW) -> list[torch.Tensor]:
    """Token windows (1 × ≤window) over the texts joined by the EOS token, at most `max_tokens` tokens."""
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + sep
        if len(ids) >= max_tokens:
            break
    ids = ids[:max_tokens]
    out = [torch.tensor(ids[i : i + window])[None, :] for i in range(0, len(ids), window)]
    return [w for w in out if w.shape[1] > 1]


def probe_key(windows: list[torch.Tensor]) -> str:
    """sha256 of the windows' token ids in order (16 hex digits)."""
    h = hashlib.sha256()
    for w in windows:
        h.update(w.numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Linear:
    """A linear layer of the blocks: its module name, weight name, input width and weight layout."""

    module: str
    weight: str
    width: int
    transposed: bool  # GPT-2's Conv1D stores the weight in × out


def linear_layers(model: torch.nn.Module, params: dict) -> list[Linear]:
    """The linear layers of the transformer blocks whose weight the pair holds, in forward order."""
    out = []
    for name, mod in model.named_modules():
        weight = f"{name}.weight"
        p = params.get(weight)
        if p is None or p.group != "layer" or getattr(mod, "weight", None) is None or mod.weight.dim() != 2:
            continue
        if isinstance(mod, torch.nn.Linear):
            out.append(Linear(name, weight, mod.in_features, False))
        elif type(mod).__name__ == "Conv1D":  # transformers' GPT-2 layer: y = x @ W, W is in × out
            out.append(Linear(name, weight, mod.weight.shape[0], True))
    return out


class _Stop(Exception):
    """Raised inside a forward once the current group's last site has read its input."""


def discover_sites(model: torch.nn.Module, layers: list[Linear], ids: torch.Tensor) -> dict[str, str]:
    """{weight: site}: linear layers that read the very same input tensor in a forward share a site (named after
    the first of them). One short forward with hooks that only look at the inputs' identity."""
    mods = dict(model.named_modules())
    seen: dict[int, str] = {}
    keep: list[torch.Tensor] = []  # held so that no id is reused by a later tensor during the forward
    sites: dict[str, str] = {}

    def hook(layer: Linear):
        def pre(_mod, args):
            x = args[0]
            keep.append(x)
            sites[layer.weight] = seen.setdefault(id(x), layer.module)

        return pre

    handles = [mods[x.module].register_forward_pre_hook(hook(x)) for x in layers]
    try:
        with torch.no_grad():
            model(input_ids=ids[:, :8].to(model.device))
    finally:
        for h in handles:
            h.remove()
    missing = [x.weight for x in layers if x.weight not in sites]
    if missing:
        raise SpearError(f"linear layer(s) {missing[:3]} read no input in a forward; this model is not supported.")
    return sites


def site_groups(layers: list[Linear], sites: dict[str, str], budget: int) -> list[list[str]]:
    """Consecutive sites in forward order, grouped so that each group's float32 Grams fit in `budget` bytes."""
    width = {sites[x.weight]: x.width for x in layers}
    order = list(dict.fromkeys(sites[x.weight] for x in layers))
    groups: list[list[str]] = [[]]
    used = 0
    for s in order:
        size = 4 * width[s] ** 2
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(s)
        used += size
    return [g for g in groups if g]


def collect_grams(model: torch.nn.Module, group: list[str], windows: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mean x xᵀ of each site's inputs over all window tokens; each forward stops after the group's last site."""
    mods = dict(model.named_modules())
    grams: dict[str, torch.Tensor] = {}
    fired: set[str] = set()
    count = 0

    def hook(site: str):
        def pre(_mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            g = grams.get(site)
            if g is None:
                grams[site] = x.T @ x
            else:
                g.addmm_(x.T, x)
            fired.add(site)
            if len(fired) == len(group):
                raise _Stop

        return pre

    handles = [mods[s].register_forward_pre_hook(hook(s)) for s in group]
    try:
        with torch.no_grad():
            for ids in windows:
                fired.clear()
                with contextlib.suppress(_Stop):
                    model(input_ids=ids.to(model.device))
                count += ids.shape[1]
    finally:
        for h in handles:
            h.remove()
    return {s: (g / count).cpu().contiguous() for s, g in grams.items()}


def collect_fisher(model: torch.nn.Module, names: list[str], windows: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Diagonal Fisher (mean over windows of the squared gradient of the window's mean token NLL) per parameter."""
    params = model.state_dict(keep_vars=True)
    wanted = {n: params[n] for n in names if n in params and params[n].is_floating_point()}
    for p in model.parameters():
        p.requires_grad_(True)
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in wanted.items()}
    for ids in windows:
        model.zero_grad(set_to_none=True)
        ids = ids.to(model.device)
        model(input_ids=ids, labels=ids).loss.backward()
        for n, p in wanted.items():
            if p.grad is not None:
                acc[n].add_(p.grad.float().square())
    model.zero_grad(set_to_none=True)
    return {n: (a / len(windows)).cpu().contiguous() for n, a in acc.items()}


def _save(path: Path, tensors: dict[str, torch.Tensor], key: str) -> None:
    """Write a safetensors file atomically (temp file in the folder, then rename), tagged with the content key."""
    tmp = temp_file(path)  # umask mode, this run's token: a later run can prove it stale
    try:
        save_file(tensors, tmp, metadata={"key": key})
        os.chmod(tmp, 0o666 & ~umask())  # safetensors leaves 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_model(path: Path, device: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval().to(device)


@dataclass(frozen=True)
class Probes:
    """Token windows of both sides' probes, and where they came from."""

    general: list[torch.Tensor]
    domain: list[torch.Tensor]
    general_source: str
    domain_source: str

    def side(self, side: Side) -> list[torch.Tensor]:
        return self.general if side == "general" else self.domain

    def info(self, side: Side) -> ProbeInfo:
        w = self.side(side)
        src = self.general_source if side == "general" else self.domain_source
        return ProbeInfo(source=src, tokens=sum(x.shape[1] for x in w), key=probe_key(w))


def probe_windows(tokenizer_dir: Path, general: Path, domain: Path, max_tokens: int) -> dict[Side, list[torch.Tensor]]:
    """Both probe files tokenised with the adapted model's tokenizer, at most `max_tokens` tokens each, checked
    (UTF-8 text, enough tokens); the probes of the statistics and of the measured planner alike."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    except (OSError, ValueError) as exc:
        raise SpearError(
            f"{tokenizer_dir}: no usable tokenizer for the probes ({exc}); save one with the model."
        ) from exc
    out: dict[Side, list[torch.Tensor]] = {}
    for what, path in (("general", general), ("domain", domain)):
        out[what] = windows_of(tok, read_texts(path), max_tokens)
        check_probe_tokens(path, sum(w.shape[1] for w in out[what]), f"{what} probe", limit=max_tokens)
    return out


def load_probes(tokenizer_dir: Path, general: Path, domain: Path, max_tokens: int = DEFAULT_TOKENS) -> Probes:
    """The statistics' probes (see `probe_windows`)."""
    out = probe_windows(tokenizer_dir, general, domain, max_tokens)
    return Probes(out["general"], out["domain"], str(general), str(domain))


def statistics_key(pair: Pair, probes: Probes, kinds: tuple[Kind, ...]) -> str:
    """The content key of a collection: the pair's fingerprints, both probes' token hashes and the kinds."""
    fingerprints = {"base": pair.base.fingerprint(), "adapted": pair.adapted.fingerprint()}
    probe_keys = {s: probes.info(s).key for s in SIDES}
    return content_key(**fingerprints, **probe_keys, kinds=sorted(set(kinds)), window=WINDOW)


def collect_statistics(
    pair: Pair,
    probes: Probes,
    out: str | Path,
    *,
    kinds: tuple[Kind, ...] = ("regmean",),
    device: str = "cpu",
    max_gram_bytes: int = DEFAULT_GRAM_BYTES,
    progress: ProgressCallback | None = None,
) -> StatsMeta:
    """Collect (or resume, or reuse) the statistics of `pair` on `probes` into the folder `out`.

    Args:
        pair: the open base/adapted pair (the models are loaded from its folders).
        probes: general and domain token windows (`load_probes`).
        out: the statistics folder; a finished folder with the same content key is reused as is.
        kinds: 'regmean' (input Grams of the blocks' linear layers) and/or 'fisher' (diagonal Fisher).
        device: 'cpu' or 'cuda[:N]' for the forward (and backward) passes.
        max_gram_bytes: Gram memory per pass; more sites than fit take more passes.
    Returns:
        The folder's `StatsMeta` (also written as `stats.json`).
    """
    out = Path(out)
    kinds = tuple(sorted(set(kinds)))
    key = statistics_key(pair, probes, kinds)
    done = read_meta(out)
    if done is not None and done.key == key:
        log.info("statistics %s: reused (key %s)", out, key)
        return done
    if done is not None:
        (out / META).unlink()  # another pair or probe: its files carry another key and are collected anew
    out.mkdir(parents=True, exist_ok=True)
    sites: dict[str, str] = {}
    files: dict[str, str] = {}
    transposed: list[str] = []
    seconds: dict[str, float] = {}
    for side in SIDES:
        started = time.perf_counter()
        model = _load_model(pair.base.path if side == "general" else pair.adapted.path, device)
        windows = probes.side(side)
        if "regmean" in kinds:
            layers = linear_layers(model, pair.params)
            sites = discover_sites(model, layers, windows[0])
            transposed = [x.weight for x in layers if x.transposed]
            groups = site_groups(layers, sites, max_gram_bytes)
            for i, group in enumerate(groups):
                path, group_key = out / f"grams.{side}.{i}.safetensors", content_key(key=key, sites=group)
                if file_key(path) != group_key:
                    _save(path, collect_grams(model, group, windows), group_key)
                files.update({f"{side}/{s}": path.name for s in group})
                if progress:
                    progress(ProgressEvent("stats", i + 1, len(groups), f"{side} grams"))
        if "fisher" in kinds:
            path = out / f"fisher.{side}.safetensors"
            if file_key(path) != key:
                _save(path, collect_fisher(model, list(pair.params), windows), key)
            files[f"fisher/{side}"] = path.name
        del model
        seconds[side] = round(time.perf_counter() - started, 3)
        log.info("statistics %s: %s side in %.1f s", out, side, seconds[side])
    meta = StatsMeta(
        key=key,
        base_fingerprint=pair.base.fingerprint(),
        adapted_fingerprint=pair.adapted.fingerprint(),
        kinds=list(kinds),
        probes={s: probes.info(s) for s in SIDES},
        sites=sites,
        transposed=transposed,
        files=files,
        seconds=seconds,
        device=device,
    )
    atomic_write_text(out / META, meta.model_dump_json(indent=1))
    return meta

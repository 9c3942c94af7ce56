"""Data-aware layer scores on a small probe of general text (forward passes; optional).

- activation drift of layer i: `1 − linear CKA(H_B, H_A)` of the layer's output hidden states
  (`hidden_states[i+1]`; for the last layer that is after the final norm in Hugging Face models);
- ground truth: restore layer i alone (t = 1: the base tensors, in memory, on the adapted model) and measure
  the probe NLL; `restore_gain = NLL(adapted) − NLL(restored)` (> 0: restoring that layer helps).

Both are compared with the weight-only layer score by Spearman's rank correlation.
"""

from __future__ import annotations

import gzip
import json
import logging
import time
from pathlib import Path

import torch

from spear_mm.errors import SpearError, describe_unicode_error
from spear_mm.io.pair import Pair
from spear_mm.scoring.table import ProbeReport, ScoreTable
from spear_mm.scoring.units import units_of

log = logging.getLogger(__name__)

WINDOW = 256
MIN_PROBE_TOKENS = 32  # fewer cannot tell a restoration's effect from noise (a one-word probe is a mistake)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two (tokens × features) activation matrices (Kornblith et al. 2019); 1 = same geometry."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    hsic = torch.linalg.matrix_norm(y.T @ x) ** 2
    den = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(hsic / den) if den > 0 else 1.0


def _ranks(v: list[float]) -> torch.Tensor:
    x = torch.tensor(v, dtype=torch.float64)
    less = (x[None, :] < x[:, None]).sum(1).double()
    equal = (x[None, :] == x[:, None]).sum(1).double()
    return less + (equal + 1) / 2


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rho with average ranks for ties; None when either side is constant or too short."""
    if len(a) != len(b) or len(a) < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra @ rb) / den) if den > 0 else None


def probe_windows(model_dir: Path, probe: Path, max_tokens: int) -> list[torch.Tensor]:
    """Token windows (1 × ≤WINDOW) of the probe text, tokenised with the adapted model's tokenizer."""
    from transformers import AutoTokenizer

    text = "\n\n".join(read_texts(probe))  # .txt, or .jsonl with a 'text' field per line
    try:
        tok = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise SpearError(f"{model_dir}: no usable tokenizer for the probe ({exc}); save one with the model.") from exc
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    check_probe_tokens(probe, ids.numel(), limit=max_tokens)
    ids = ids[:max_tokens]
    return [ids[i : i + WINDOW][None, :] for i in range(0, ids.numel() - 1, WINDOW) if ids[i : i + WINDOW].numel() > 1]


@torch.no_grad()
def _run(model, windows: list[torch.Tensor], hidden: bool) -> tuple[float, list[torch.Tensor]]:
    """Mean token NLL over the windows, and per-layer output hidden states (tokens × d) when asked."""
    total, count, states = 0.0, 0, []
    for ids in windows:
        out = model(input_ids=ids, labels=ids, output_hidden_states=hidden)
        n = ids.shape[1] - 1
        total += float(out.loss) * n
        count += n
        if hidden:
            states.append([h[0].float() for h in out.hidden_states[1:]])
    layers = [torch.cat([s[i] for s in states]) for i in range(len(states[0]))] if hidden else []
    return total / count, layers


def _load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def restore_gains(model, pair: Pair, windows: list[torch.Tensor], nll_adapted: float) -> dict[str, float]:
    """For each unit (layers, embed, head, final norm): probe NLL(adapted) − NLL(adapted with that unit's tensors
    replaced by the base's)."""

    params = dict(model.named_parameters())
    gains = {}
    for unit, unit_names in units_of(pair.params).items():
        names = [n for n in unit_names if n in params]
        if not names:
            continue
        saved = {n: params[n].detach().clone() for n in names}
        with torch.no_grad():
            for n in names:
                params[n].copy_(pair.base.read(n).to(params[n].dtype))
        if hasattr(model, "tie_weights"):
            model.tie_weights()
        gains[unit] = nll_adapted - _run(model, windows, hidden=False)[0]
        with torch.no_grad():
            for n in names:
                params[n].copy_(saved[n])
    return gains


def add_probe_scores(
    table: ScoreTable, pair: Pair, probe: str | Path | None, *, ground_truth: bool = False, max_tokens: int = 2048
) -> ScoreTable:
    """Add activation drift (and with `ground_truth`, restore gains) per layer and the Spearman correlations."""
    if probe is None:
        raise SpearError("data-aware scores need --probe FILE (a few thousand tokens of general text).")
    started = time.perf_counter()
    probe = Path(probe)
    windows = probe_windows(pair.adapted.path, probe, max_tokens)
    base_model = _load(pair.base.path)
    nll_base, h_base = _run(base_model, windows, hidden=True)
    del base_model
    model = _load(pair.adapted.path)
    nll_adapted, h_adapted = _run(model, windows, hidden=True)
    n = min(len(h_base), table.num_layers)
    drift = [1.0 - linear_cka(h_base[i], h_adapted[i]) for i in range(n)] + [None] * (table.num_layers - n)
    del h_base, h_adapted
    unit_gains = restore_gains(model, pair, windows, nll_adapted) if ground_truth else {}
    gains = [unit_gains.get(f"layer.{i}") for i in range(table.num_layers)]
    layers = [
        s.model_copy(update=dict(activation_drift=drift[s.layer], restore_gain=gains[s.layer])) for s in table.layers
    ]
    units = [
        u.model_copy(
            update=dict(
                restore_gain=unit_gains.get(u.unit), activation_drift=drift[u.layer] if u.layer is not None else None
            )
        )
        for u in table.units
    ]
    scores = [s.score for s in table.layers]
    report = ProbeReport(
        probe=str(probe),
        tokens=sum(w.shape[1] for w in windows),
        nll_base=nll_base,
        nll_adapted=nll_adapted,
        spearman_cka=spearman(scores, drift) if None not in drift else None,
        spearman_ground_truth=spearman(scores, gains) if ground_truth else None,
        seconds=time.perf_counter() - started,
    )
    log.info("probe scores: %s", report)
    timing = table.timing.model_copy(update={"probe_seconds": report.seconds})
    return table.model_copy(update=dict(layers=layers, units=units, probe=report, timing=timing))


def read_texts(path: str | Path) -> list[str]:
    """Texts of a probe file: .txt (the whole file), .jsonl / .jsonl.gz (the `text` field of every line). The file
    must be UTF-8 text (no replacement characters are invented) with some non-blank text."""
    path = Path(path)
    if not path.is_file():
        raise SpearError(f"{path}: probe text file not found. Pass a .txt or a .jsonl with a 'text' field per line.")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise describe_unicode_error(exc, f"probe file {path}") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise SpearError(f"probe file {path}: unreadable ({exc}). Pass a .txt, .jsonl or .jsonl.gz file.") from None
    texts = [text] if ".jsonl" not in path.name else _jsonl_texts(text, path)
    if not any(t.strip() for t in texts):
        raise SpearError(
            f"probe file {path}: no text in it (blank). Give held-out text of at least {MIN_PROBE_TOKENS} tokens."
        )
    return texts


def _jsonl_texts(text: str, path: Path) -> list[str]:
    texts = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            value = row["text"] if "text" in row else row["body"]
        except (ValueError, KeyError, TypeError) as exc:
            raise SpearError(f"{path}, line {n}: not a JSON object with a 'text' field ({exc}).") from exc
        if not isinstance(value, str):
            raise SpearError(f"{path}, line {n}: the 'text' field is a {type(value).__name__}, not a string of text.")
        texts.append(value)
    return texts


def check_probe_tokens(path: str | Path, n: int, what: str = "probe", limit: int | None = None) -> None:
    """Refuse a probe too short to measure an NLL on (e.g. one word): fewer than MIN_PROBE_TOKENS tokens, or
    than `limit` when the user asked for fewer tokens than that."""
    need = min(MIN_PROBE_TOKENS, limit or MIN_PROBE_TOKENS)
    if n < need:
        raise SpearError(
            f"{path}: the {what} has {n} token(s); at least {need} are needed to measure a loss on it. "
            "Give a longer text (a few paragraphs of held-out text)."
        )

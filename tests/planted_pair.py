"""A pico pair with a known answer for the measured planner (tests and bench/planner_bench.py).

- base: a random pico Llama (tests/common.py);
- "CPT": layer `DOMAIN_LAYER`'s MLP really trained (AdamW, a few dozen steps) on a repetitive domain text, so
  the domain probe's NLL falls and only that layer carries the gain;
- damage: a large low-rank drift planted in layer `DAMAGED_LAYER` and noise of 60% in the token embeddings,
  plus 0.5% noise everywhere else (harmless).
Restoring the damaged layer and the embeddings (t = 1) therefore undoes the general damage and keeps the
domain gain; restoring the trained layer throws the domain gain away. A planner must find that plan.
"""

from __future__ import annotations

from pathlib import Path

import torch
from common import make_tiny_model, make_tokenizer

DOMAIN_LAYER, DAMAGED_LAYER = 1, 4
DOMAIN_TEXT = (
    "Net income rose 12 percent to 4.2 billion dollars. The central bank held its policy rate at 5.25 percent. "
    "Credit spreads and loan loss provisions were discussed. Revenue rose 12 percent. "
)


def _train_layer(
    model, tok, layer: int, steps: int, seed: int, part: str = "mlp", ids=None, sign: float = 1.0, lr: float = 3e-3
) -> None:
    """Train `part` of one layer on `ids` (default: the domain text); sign −1 is gradient ascent (forgetting)."""
    if ids is None:
        ids = tok(DOMAIN_TEXT * 6, return_tensors="pt", add_special_tokens=False)["input_ids"][:, :192]
    for name, p in model.named_parameters():
        p.requires_grad_(f"layers.{layer}.{part}." in name)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    torch.manual_seed(seed)
    model.train()
    for _ in range(steps):
        loss = sign * model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)


def _plant_damage(model, seed: int, layer: int = DAMAGED_LAYER) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = p.float().std().clamp_min(1e-3)
            p.add_(torch.randn(p.shape, generator=g) * scale * 0.005)
            if f"layers.{layer}." in name and p.ndim == 2:
                u, v = torch.randn(p.shape[0], 2, generator=g), torch.randn(2, p.shape[1], generator=g)
                p.add_((u @ v) * p.norm() / (u @ v).norm() * 1.5)
            if "embed_tokens" in name:
                p.add_(torch.randn(p.shape, generator=g) * scale * 0.6)


def save_planted_pair(
    root: Path, steps: int = 40, seed: int = 0, damaged_layer: int = DAMAGED_LAYER
) -> dict[str, Path]:
    """base/, adapted/, general.jsonl (base samples) and domain.txt under `root`."""
    import json

    tok = make_tokenizer()
    base = make_tiny_model(vocab_size=len(tok), seed=seed, tie_word_embeddings=False)
    paths = {k: root / k for k in ("base", "adapted")}
    base.save_pretrained(paths["base"])
    tok.save_pretrained(paths["base"])
    torch.manual_seed(seed)
    start = torch.full((6, 1), tok.eos_token_id)
    with torch.no_grad():
        gen = base.generate(start, attention_mask=torch.ones_like(start), do_sample=True, top_k=0,
                            max_new_tokens=64, min_new_tokens=64, pad_token_id=tok.pad_token_id)  # fmt: skip
    paths["general"] = root / "general.jsonl"
    paths["general"].write_text("".join(json.dumps({"text": tok.decode(r[1:])}) + "\n" for r in gen))
    paths["domain"] = root / "domain.txt"
    paths["domain"].write_text(DOMAIN_TEXT * 3)
    _train_layer(base, tok, DOMAIN_LAYER, steps, seed)
    _plant_damage(base, seed + 1, damaged_layer)
    base.save_pretrained(paths["adapted"])
    tok.save_pretrained(paths["adapted"])
    return paths


def save_sublayer_pair(root: Path, steps: int = 40, seed: int = 0, forget_steps: int = 8) -> dict[str, Path]:
    """A pair whose answer lies *inside* one layer: layer `DOMAIN_LAYER`'s MLP learns the domain text, then its
    attention is trained to forget the general probe (gradient ascent on the base's samples). Restoring the
    attention alone fixes the general damage and keeps the domain gain; restoring the whole layer loses it."""
    paths = save_planted_pair(root, steps=steps, seed=seed, damaged_layer=-1)  # no planted damage in any layer
    import json

    from transformers import AutoModelForCausalLM

    tok = make_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(paths["adapted"], dtype=torch.float32)
    texts = [json.loads(line)["text"] for line in paths["general"].read_text().splitlines()]
    ids = torch.stack([tok(t, return_tensors="pt", add_special_tokens=False)["input_ids"][0, :48] for t in texts])
    _train_layer(model, tok, DOMAIN_LAYER, forget_steps, seed, part="self_attn", ids=ids, sign=-1.0, lr=1e-3)
    model.save_pretrained(paths["adapted"])
    return paths


def open_planted(paths: dict[str, Path]) -> tuple:
    """(paths, pair, probes, scores) of a saved planted pair: what the planner tests start from."""
    from spear_mm.io.pair import open_pair
    from spear_mm.measured.probe import load_probes
    from spear_mm.scoring.layers import analyze

    pair = open_pair(paths["base"], paths["adapted"])
    probes = load_probes(paths["adapted"], paths["general"], paths["domain"])
    scores = analyze(paths["base"], paths["adapted"], paths["base"].parent / "scores", workers=1)
    return paths, pair, probes, scores

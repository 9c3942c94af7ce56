"""A synthetic TinyLlama-shape (1.1B) bf16 base/adapted pair for benchmarks, written shard by shard.

Base matrices are Gaussian noise plus a planted low-rank signal (so SNR means something); the adapted model is
the base plus a few % of structured drift (half noise, half low-rank), whose size varies by layer so the layer
ranking is well separated. `--scale` shrinks the widths (hidden, intermediate, vocab) for quick runs. A pair
already written with the same parameters is reused (bench/_work/ by default).

    python bench/synth_pair.py --scale 1.0            # -> bench/_work/synth-1.0-0/{base,adapted}
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

WORK = Path(__file__).resolve().parent / "_work"
TINYLLAMA = dict(hidden=2048, layers=22, intermediate=5632, heads=32, kv_heads=4, vocab=32000)
VERSION = 1


def dims(scale: float) -> dict[str, int]:
    """TinyLlama dimensions with the widths scaled (multiples of 64; heads kept)."""
    w = lambda x: max(64, int(round(x * scale / 64)) * 64)  # noqa: E731
    d = dict(TINYLLAMA, hidden=w(2048), intermediate=w(5632), vocab=max(256, int(round(32000 * scale))))
    d["kv_dim"] = d["hidden"] // d["heads"] * d["kv_heads"]
    return d


def _signal(m: int, n: int, strength: float, g: torch.Generator, rank: int = 16) -> torch.Tensor:
    """Noise (std 0.02) plus `rank` planted directions `strength`× above the Marchenko–Pastur edge."""
    edge = 0.02 * (math.sqrt(m) + math.sqrt(n))
    u = torch.randn(m, rank, generator=g) / math.sqrt(m)
    v = torch.randn(rank, n, generator=g) / math.sqrt(n)
    spikes = edge * strength * torch.linspace(1.5, 4.0, rank)
    return torch.randn(m, n, generator=g) * 0.02 + (u * spikes) @ v


def _drift(w: torch.Tensor, rel: float, g: torch.Generator) -> torch.Tensor:
    """Drift of relative size `rel`: half isotropic noise, half a rank-8 update."""
    m, n = w.shape
    noise = torch.randn(m, n, generator=g)
    low = torch.randn(m, 8, generator=g) @ torch.randn(8, n, generator=g)
    d = noise / noise.norm() + low / low.norm()
    return d * (rel * w.norm() / d.norm())


def _layer_drift(i: int, layers: int, seed: int) -> float:
    """Relative change of layer i: 1–5%, a deterministic permutation so the top layers are not contiguous."""
    order = torch.randperm(layers, generator=torch.Generator().manual_seed(seed + 999)).tolist()
    return 0.01 + 0.04 * order.index(i) / max(1, layers - 1)


def _config(d: dict) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": d["hidden"],
        "intermediate_size": d["intermediate"],
        "num_hidden_layers": d["layers"],
        "num_attention_heads": d["heads"],
        "num_key_value_heads": d["kv_heads"],
        "vocab_size": d["vocab"],
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def _save(folder: Path, shard: str, tensors: dict[str, torch.Tensor], index: dict[str, str]) -> None:
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()}, folder / shard, {"format": "pt"})
    index.update(dict.fromkeys(tensors, shard))


def make_synth_pair(out_dir: str | Path | None = None, scale: float = 1.0, seed: int = 0) -> tuple[Path, Path]:
    """Write (or reuse) base/ and adapted/ under `out_dir` (default bench/_work/synth-{scale}-{seed})."""
    root = Path(out_dir) if out_dir else WORK / f"synth-{scale:g}-{seed}"
    base_dir, adapted_dir = root / "base", root / "adapted"
    d = dims(scale)
    marker = root / "synth.json"
    spec = {"version": VERSION, "scale": scale, "seed": seed, "dims": d}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return base_dir, adapted_dir
    for folder in (base_dir, adapted_dir):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(_config(d), indent=1))
        for old in folder.glob("*.safetensors"):
            old.unlink()
    g = torch.Generator().manual_seed(seed)
    h, inter, kv, n = d["hidden"], d["intermediate"], d["kv_dim"], d["layers"]
    idx_b: dict[str, str] = {}
    idx_a: dict[str, str] = {}
    shards = n + 2
    for i in range(n):
        shard = f"model-{i + 2:05d}-of-{shards:05d}.safetensors"
        p = f"model.layers.{i}."
        shapes = {
            "self_attn.q_proj": (h, h),
            "self_attn.k_proj": (kv, h),
            "self_attn.v_proj": (kv, h),
            "self_attn.o_proj": (h, h),
            "mlp.gate_proj": (inter, h),
            "mlp.up_proj": (inter, h),
            "mlp.down_proj": (h, inter),
        }
        strength = 1.0 + 0.5 * math.sin(i)  # information density varies by layer
        base = {p + k + ".weight": _signal(*s, strength, g) for k, s in shapes.items()}
        base |= {
            p + k + ".weight": 1 + 0.05 * torch.randn(h, generator=g)
            for k in ("input_layernorm", "post_attention_layernorm")
        }
        rel = _layer_drift(i, n, seed)
        adapted = {
            k: (w + _drift(w, rel, g) if w.ndim == 2 else w + 0.002 * torch.randn(h, generator=g))
            for k, w in base.items()
        }
        _save(base_dir, shard, base, idx_b)
        _save(adapted_dir, shard, adapted, idx_a)
    first, last = f"model-00001-of-{shards:05d}.safetensors", f"model-{shards:05d}-of-{shards:05d}.safetensors"
    for shard, names in ((first, ["model.embed_tokens.weight"]), (last, ["lm_head.weight", "model.norm.weight"])):
        base = {
            k: (torch.randn(d["vocab"], h, generator=g) * 0.02 if "norm" not in k else torch.ones(h)) for k in names
        }
        adapted = {
            k: w + (0.05 * w.std() * torch.randn(w.shape, generator=g) if w.ndim == 2 else 0.001)
            for k, w in base.items()
        }
        _save(base_dir, shard, base, idx_b)
        _save(adapted_dir, shard, adapted, idx_a)
    for folder, index in ((base_dir, idx_b), (adapted_dir, idx_a)):
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": index}, indent=1)
        )
    marker.write_text(json.dumps(spec))
    return base_dir, adapted_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="width scale (1.0 = TinyLlama 1.1B)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    print(*make_synth_pair(args.out, args.scale, args.seed))


if __name__ == "__main__":
    main()

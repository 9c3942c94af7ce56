"""Pico models and tokenizers built in code (no hub downloads), shared by the tests and benchmarks."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

SHARED = Path(__file__).resolve().parents[2] / "shared"

_TRAIN_TEXT = (
    "The quick brown fox jumps over the lazy dog. Revenue rose 12 percent to 4.2 billion dollars. "
    "The central bank held its policy rate at 5.25 percent. Water boils at 100 degrees Celsius. "
    "Net income, operating margin, credit spreads and loan loss provisions were discussed. "
    "Question: What is two plus two? Answer: four. 0123456789 positive negative neutral"
)


def make_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer trained in memory; has eos/pad/bos tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([_TRAIN_TEXT] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|pad|>"
    )


TINY_DIMS = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4)


def make_tiny_model(model_type: str = "llama", vocab_size: int = 300, seed: int = 0, **overrides):
    """A randomly initialised pico model of any family that transformers knows, in float32."""
    torch.manual_seed(seed)
    kwargs = dict(TINY_DIMS, vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, pad_token_id=1)
    kwargs.update(overrides)
    if model_type in {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3"}:
        kwargs.setdefault("num_key_value_heads", 2)
        kwargs.setdefault("max_position_embeddings", 256)
    config = AutoConfig.for_model(model_type, **kwargs)
    return AutoModelForCausalLM.from_config(config).eval()


def perturb_(model, layers: dict[int, float] | None = None, everywhere: float = 0.01, seed: int = 1):
    """Adapted-model stand-in: add relative noise `everywhere`, and strong low-rank drift to `layers`."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * p.float().std().clamp_min(1e-3) * everywhere
            p.add_(noise.to(p.dtype))
            for layer, strength in (layers or {}).items():
                if f"layers.{layer}." in name and p.ndim == 2:
                    u = torch.randn(p.shape[0], 2, generator=g)
                    v = torch.randn(2, p.shape[1], generator=g)
                    p.add_((u @ v) * p.norm() / (u @ v).norm() * strength)
    return model


def save_pair(
    root: Path, model_type: str = "llama", drift_layers: dict[int, float] | None = None, **save_kwargs
) -> tuple[Path, Path]:
    """Write base/ and adapted/ HF folders (with tokenizer) under `root`; returns their paths."""
    tok = make_tokenizer()
    base = make_tiny_model(model_type, vocab_size=len(tok))
    base_dir, adapted_dir = root / "base", root / "adapted"
    base.save_pretrained(base_dir, **save_kwargs)
    tok.save_pretrained(base_dir)
    perturb_(base, drift_layers)
    base.save_pretrained(adapted_dir, **save_kwargs)
    tok.save_pretrained(adapted_dir)
    return base_dir, adapted_dir


def fold(text: str) -> str:
    """CLI output with table borders and line breaks folded to single spaces, so assertions read like the cells."""
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", text).split())


def digest(*folders: Path) -> dict[str, str]:
    """sha256 of every file under the folders (links followed), by path: compare before/after to prove no write."""
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        if folder.exists()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    """Run `spear-mm ARGS` in process through `spear_mm.cli.main()` with wide consoles; returns (exit code,
    stdout+stderr with table borders and line breaks folded to single spaces)."""
    import importlib
    import re
    import sys

    import pytest

    import spear_mm.cli

    for name in ("", ".merge", ".analyze", ".evaluate", ".run", ".discover"):
        module = importlib.import_module("spear_mm.cli" + name)
        monkeypatch.setattr(getattr(module, "out_console", None) or module.console, "width", 4000)
    monkeypatch.setattr(spear_mm.cli.console, "width", 4000)
    monkeypatch.setattr(sys, "argv", ["spear-mm", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        spear_mm.cli.main()
    out = capsys.readouterr()
    return exc.value.code or 0, " ".join(re.sub(r"[\u2500-\u257f]", " ", out.out + out.err).split())


FINANCE = [
    "Revenue rose 12 percent to 4.2 billion dollars, and operating margin improved.",
    "The central bank held its policy rate at 5.25 percent. Credit spreads narrowed.",
    "Net income and loan loss provisions were discussed with the credit committee.",
    "The company issued bonds and the rating agency kept its outlook stable.",
]
GENERAL = [
    "The quick brown fox jumps over the lazy dog. Water boils at 100 degrees Celsius.",
    "Question: What is two plus two? Answer: four. The dog sleeps in the sun.",
    "The cat sat on the mat and looked at the birds in the garden.",
    "Children play in the park after school while their parents talk.",
]


def save_cpt_pair(root: Path) -> tuple[Path, Path]:
    """A 4-layer pico Llama pre-trained briefly on general text (the base), then CPT on a small finance corpus
    (the adapted model): two real Trainer runs (seconds); the second writes the cost.json a run compares against."""
    from spear_mm.training.cpt import CptConfig, cpt

    tok = make_tokenizer()
    init = root / "init"
    make_tiny_model("llama", vocab_size=len(tok), num_hidden_layers=4).save_pretrained(init)
    tok.save_pretrained(init)
    fast = dict(lr=3e-3, seq_len=32, batch_size=4, logging_steps=10, progress=False, threads=1)
    (root / "general.txt").write_text("\n\n".join(GENERAL * 8) + "\n")
    cpt(init, [root / "general.txt"], root / "base", CptConfig(max_steps=60, **fast))
    (root / "finance.txt").write_text("\n\n".join(FINANCE * 8) + "\n")
    cpt(root / "base", [root / "finance.txt"], root / "adapted", CptConfig(max_steps=30, **fast))
    return root / "base", root / "adapted"


def run_summary(run_dir: Path, **fields):
    """A `RunSummary` as `spear-mm run` writes it (summary.json), with the fields a report test sets; the others
    hold placeholder values."""
    from spear_mm.report.schema import CostSummary, RunSummary

    cost = CostSummary(
        device="cpu",
        score_seconds=30.0,
        mean_merge_seconds=2.0,
        mean_eval_seconds=10.0,
        per_configuration_seconds=42.0,
        configurations=len(fields.get("candidates", {})),
        total_seconds=200.0,
    )
    required = dict(
        run_dir=str(run_dir),
        base_path="base",
        adapted_path="adapted",
        base_fingerprint="b",
        adapted_fingerprint="a",
        suites="test",
        limit=None,
        seed=0,
        chosen=None,
        choice_rule="test",
        cost=cost,
    )
    return RunSummary(**{**required, **fields})

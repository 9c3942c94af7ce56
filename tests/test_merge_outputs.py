"""What a merge writes: `--out-dtype` (t = 0 in the same dtype stays bit-exact; other dtypes are the float32
merge cast once), `evaluate --dtype`, and the side files (tokenizer and generation config as the adapted model's;
the adapted model's training records left out; the merge's own provenance in)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from common import run_cli
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer, GenerationConfig

import spear_mm.merging.streaming
from spear_mm.errors import SpearError
from spear_mm.io.checkpoint import Checkpoint
from spear_mm.io.dtypes import parse_dtype
from spear_mm.pipeline.config import RunConfig
from spear_mm.training.cpt import CptConfig, _save_dtype


@pytest.fixture()
def cli(monkeypatch, capsys):
    return lambda *args: run_cli(monkeypatch, capsys, *args)


def _dtypes(folder: Path) -> set[str]:
    return {str(i.dtype) for i in Checkpoint.open(folder).infos.values()}


@pytest.mark.parametrize("out_dtype", [None, "fp32"])
def test_t0_in_the_same_dtype_is_bit_exact(tiny_pair, tmp_path, cli, out_dtype):
    base, adapted = tiny_pair
    args = ["--out-dtype", out_dtype] if out_dtype else []
    code, text = cli("merge", base, adapted, "--t", "0", "-o", tmp_path / "m", *args)
    assert code == 0, text
    merged, original = load_file(tmp_path / "m" / "model.safetensors"), load_file(adapted / "model.safetensors")
    assert merged.keys() == original.keys()
    for name, tensor in original.items():
        assert tensor.dtype == merged[name].dtype and torch.equal(tensor, merged[name]), name


@pytest.mark.parametrize(
    ("name", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16), ("bfloat16", torch.bfloat16)]
)
def test_out_dtype_writes_that_dtype(tiny_pair, tmp_path, cli, monkeypatch, name, dtype):
    base, adapted = tiny_pair
    code, text = cli("merge", base, adapted, "--t", "0.5", "-o", tmp_path / "fp32")
    assert code == 0, text
    monkeypatch.setattr(spear_mm.merging.streaming, "STREAM_ABOVE", 4096)  # the chunked path (large tensors) too
    code, text = cli("merge", base, adapted, "--t", "0.5", "--out-dtype", name, "-o", tmp_path / name)
    assert code == 0, text
    assert f"dtype {str(dtype).removeprefix('torch.')}" in text
    assert _dtypes(tmp_path / name) == {str(dtype)}
    ref, out = load_file(tmp_path / "fp32" / "model.safetensors"), load_file(tmp_path / name / "model.safetensors")
    for key, tensor in ref.items():  # merged in float32, cast once on the way out
        assert torch.equal(out[key], tensor.to(dtype)), key
    config = AutoConfig.from_pretrained(tmp_path / name)
    assert config.dtype == dtype  # what transformers loads the merged folder as
    report = json.loads((tmp_path / name / "merge_report.json").read_text())
    assert report["out_dtype"] == str(dtype).removeprefix("torch.")
    with safe_open(tmp_path / name / "model.safetensors", "pt") as f:  # a valid file transformers can read
        assert len(list(f.keys())) == len(ref)


def test_dry_run_shows_the_output_dtype_and_bad_names_are_refused(tiny_pair, tmp_path, cli):
    base, adapted = tiny_pair
    code, text = cli("merge", base, adapted, "--t", "0.5", "--out-dtype", "bf16", "--dry-run", "-o", tmp_path / "x")
    assert code == 0 and "bfloat16" in text and not (tmp_path / "x").exists()
    code, text = cli("merge", base, adapted, "--t", "0.5", "--out-dtype", "int8", "-o", tmp_path / "x")
    assert code == 2 and "bf16" in text and "fp16" in text and not (tmp_path / "x").exists()


def test_evaluate_dtype(tiny_pair, tmp_path, cli):
    _, adapted = tiny_pair
    out = tmp_path / "eval"
    code, text = cli("evaluate", adapted, "--suite", "demo", "--limit", "2", "--dtype", "bf16", "-o", out)
    assert code == 0, text
    assert json.loads((out / "adapted.json").read_text())["dtype"] == "bfloat16"
    code, text = cli("evaluate", adapted, "--suite", "demo", "--limit", "2", "-o", out)
    assert json.loads((out / "adapted.json").read_text())["dtype"] == "float32"
    code, text = cli("evaluate", adapted, "--suite", "demo", "--limit", "2", "--dtype", "float16", "-o", out)
    assert code == 0, text  # transformers' / lm-eval's spelling too
    assert json.loads((out / "adapted.json").read_text())["dtype"] == "float16"


def test_both_dtype_spellings_everywhere():
    for short, long, dtype in (("bf16", "bfloat16", torch.bfloat16), ("fp16", "float16", torch.float16),
                               ("fp32", "float32", torch.float32)):  # fmt: skip
        assert parse_dtype(short) == parse_dtype(long) == parse_dtype(long.upper()) == dtype
        assert parse_dtype(RunConfig(base="b", adapted="a", out_dtype=long).out_dtype) == dtype
        assert _save_dtype(CptConfig(save_dtype=long).save_dtype, "cpu", torch.float32) == dtype
    assert _save_dtype(CptConfig().save_dtype, "cpu", torch.bfloat16) == torch.float32  # auto on CPU
    assert _save_dtype(CptConfig(save_dtype="base").save_dtype, "cpu", torch.bfloat16) == torch.bfloat16
    with pytest.raises(SpearError, match="bfloat16"):
        parse_dtype("int8")


def test_merged_folder_keeps_tokenizer_and_generation_config_but_not_training_records(tiny_pair, tmp_path, cli):
    base, original = tiny_pair
    adapted = tmp_path / "adapted"
    shutil.copytree(original, adapted)
    tok = AutoTokenizer.from_pretrained(adapted)
    tok.chat_template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    tok.save_pretrained(adapted)
    GenerationConfig(max_new_tokens=17, temperature=0.3, do_sample=True, eos_token_id=0).save_pretrained(adapted)
    (adapted / "cost.json").write_text(json.dumps({"seconds": 123.0}))
    (adapted / "train_log.jsonl").write_text('{"step": 1, "loss": 3.2}\n')
    code, text = cli("merge", base, adapted, "--t", "0.5", "-o", tmp_path / "m")
    assert code == 0, text
    merged = tmp_path / "m"
    assert not (merged / "cost.json").exists() and not (merged / "train_log.jsonl").exists()
    assert {"plan.yaml", "merge_report.json", "README.md"} <= {p.name for p in merged.iterdir()}
    assert "left out" in (merged / "README.md").read_text()
    a, m = AutoTokenizer.from_pretrained(adapted), AutoTokenizer.from_pretrained(merged)
    chat = [{"role": "user", "content": "Revenue rose 12 percent."}]
    assert m.get_vocab() == a.get_vocab() and m.all_special_tokens == a.all_special_tokens
    assert m("The central bank held.")["input_ids"] == a("The central bank held.")["input_ids"]
    assert m.apply_chat_template(chat, tokenize=False) == a.apply_chat_template(chat, tokenize=False)
    ga, gm = GenerationConfig.from_pretrained(adapted), GenerationConfig.from_pretrained(merged)
    assert gm.to_dict() == ga.to_dict() and gm.max_new_tokens == 17

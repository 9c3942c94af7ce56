"""`spear-mm cpt`: real Trainer runs on a pico Llama (and stories260K when available)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch
from common import make_tiny_model, make_tokenizer, run_cli
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from spear_mm.cli import app
from spear_mm.errors import SpearError
from spear_mm.planning.freeze import freeze_patterns, layer_index, write_freeze_yaml
from spear_mm.planning.plan import Plan
from spear_mm.training.corpus import iter_documents, pack_corpus
from spear_mm.training.cpt import CptConfig, cpt

DOCS = [
    "Revenue rose 12 percent to 4.2 billion dollars, and operating margin improved.",
    "The central bank held its policy rate at 5.25 percent.\nCredit spreads narrowed.",
    "Net income and loan loss provisions were discussed. The quick brown fox jumps over the lazy dog.",
    "Question: What is two plus two? Answer: four.",
]
FAST = dict(seq_len=32, batch_size=4, logging_steps=1, progress=False, device="cpu", threads=1)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A 4-layer pico Llama with its tokenizer, saved as an HF folder."""
    tok = make_tokenizer()
    path = tmp_path_factory.mktemp("cpt") / "base"
    make_tiny_model("llama", vocab_size=len(tok), num_hidden_layers=4).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "finance.txt"
    path.write_text("\n\n".join(DOCS * 8) + "\n")
    return path


def test_corpus_formats(tmp_path: Path, corpus: Path) -> None:
    assert list(iter_documents(corpus))[:4] == DOCS
    jsonl = tmp_path / "docs.jsonl.gz"
    with gzip.open(jsonl, "wt") as f:
        f.writelines(json.dumps({"body": d, "id": i}) + "\n" for i, d in enumerate(DOCS))
    assert list(iter_documents(jsonl, "body")) == DOCS
    with pytest.raises(SpearError, match=r"line 1: no field 'text' \(found \['body', 'id'\]\)"):
        list(iter_documents(jsonl))
    (tmp_path / "docs.csv").write_text("a,b\n")
    with pytest.raises(SpearError, match="unknown corpus format"):
        list(iter_documents(tmp_path / "docs.csv"))
    tok = make_tokenizer()
    blocks = pack_corpus(tok, [corpus], seq_len=16)
    n_tokens = sum(len(tok(d).input_ids) + 1 for d in DOCS * 8)
    assert blocks.shape == (n_tokens // 16, 16)
    assert (blocks == tok.eos_token_id).sum() >= len(DOCS * 8) - 16  # one EOS after every packed document
    with pytest.raises(SpearError, match="fewer than one block"):
        pack_corpus(tok, [corpus], seq_len=100_000)


@pytest.mark.slow  # trains a CPT (`make test-fast` runs none)
def test_cpt_trains_logs_and_writes_a_model(tmp_path: Path, base: Path, corpus: Path) -> None:
    out = tmp_path / "adapted"
    result = cpt(base, [corpus], out, CptConfig(max_steps=12, lr=3e-3, **FAST))
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in log if "loss" in e]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3]), losses
    assert all(e["tokens_per_s"] > 0 for e in log if "loss" in e)
    cost = json.loads((out / "cost.json").read_text())
    for key in ("wall_seconds", "train_tokens", "steps", "trainable_parameters", "total_parameters", "device"):
        assert key in cost
    assert (cost["steps"], cost["train_tokens"], cost["device"], cost["threads"]) == (12, 12 * 4 * 32, "cpu", 1)
    assert cost["trainable_parameters"] == cost["total_parameters"] == result.total_parameters
    assert cost["torch_version"] == torch.__version__ and cost["saved_dtype"] == "float32"
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.float32 and (out / "tokenizer.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapted"]  # no work or temporary folders left
    with pytest.raises(SpearError, match="already exists"):
        cpt(base, [corpus], out, CptConfig(max_steps=1, **FAST))


@pytest.mark.slow  # trains a CPT (`make test-fast` runs none)
def test_frozen_layers_stay_bit_identical(tmp_path: Path, base: Path, corpus: Path) -> None:
    freeze = write_freeze_yaml(tmp_path / "freeze.yaml", freeze_patterns([1, 3], freeze_embeddings=True))
    out = tmp_path / "frozen"
    args = ["cpt", str(base), "--corpus", str(corpus), "-o", str(out), "--freeze", str(freeze)]
    args += ["--max-steps", "4", "--lr", "1e-2", "--seq-len", "32", "--device", "cpu", "--logging-steps", "2"]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    before, after = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
    for name, tensor in before.items():
        frozen = layer_index(name) in (1, 3) or "embed_tokens" in name
        assert torch.equal(tensor, after[name]) == frozen, name
    cost = json.loads((out / "cost.json").read_text())
    assert cost["frozen_layers"] == [1, 3] and cost["trainable_parameters"] < cost["total_parameters"]


@pytest.mark.slow  # trains a CPT (`make test-fast` runs none)
def test_freeze_from_a_plan(tmp_path: Path, base: Path, corpus: Path) -> None:
    plan = Plan.from_layer_list([1.0, 0.5, 0.0, 1.0]).save(tmp_path / "plan.yaml")
    result = cpt(base, [corpus], tmp_path / "out", CptConfig(max_steps=2, freeze=plan, **FAST))
    assert result.frozen_layers == [0, 3]  # t = 1 ("base") layers; t = 0.5 still trains


@pytest.mark.slow  # trains a CPT (`make test-fast` runs none)
def test_interrupted_run_resumes(tmp_path: Path, base: Path, corpus: Path, monkeypatch) -> None:
    import spear_mm.training.cpt as training

    out = tmp_path / "adapted"

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_publish", crash)  # interrupted after training, before the final folder
    with pytest.raises(KeyboardInterrupt):
        cpt(base, [corpus], out, CptConfig(max_steps=4, save_steps=2, **FAST))
    monkeypatch.undo()
    work = tmp_path / "adapted.work"
    assert not out.exists() and (work / "checkpoints" / "checkpoint-4").is_dir()
    with open(work / "train_log.jsonl", "a") as f:  # as if the crash came one step after the checkpoint
        f.write(json.dumps({"step": 5, "loss": 9.9}) + "\n")
    shutil.rmtree(work / "checkpoints" / "checkpoint-4")
    with pytest.raises(SpearError, match="resume-from-checkpoint"):
        cpt(base, [corpus], out, CptConfig(max_steps=4, **FAST))
    result = cpt(base, [corpus], out, CptConfig(max_steps=6, save_steps=2, resume_from_checkpoint=True, **FAST))
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert result.steps == 6 and [e["step"] for e in log if "loss" in e] == [1, 2, 3, 4, 5, 6]
    assert 9.9 not in [e.get("loss") for e in log]
    assert not work.exists()


def test_bad_inputs(tmp_path: Path, base: Path, corpus: Path) -> None:
    with pytest.raises(SpearError, match="not a Hugging Face model folder"):
        cpt(tmp_path, [corpus], tmp_path / "o", CptConfig(**FAST))
    with pytest.raises(SpearError, match="corpus file not found"):
        cpt(base, [tmp_path / "missing.txt"], tmp_path / "o", CptConfig(**FAST))
    everything = write_freeze_yaml(tmp_path / "none.yaml", ["^nothing$"])
    with pytest.raises(SpearError, match="nothing would train"):
        cpt(base, [corpus], tmp_path / "o", CptConfig(freeze=everything, **FAST))
    with pytest.raises(ValueError):
        CptConfig(max_step=3)  # typo: an error, not a silent default
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch sees a GPU")
def test_cuda_n_is_checked_as_merge_checks_it(tmp_path: Path, base: Path, corpus: Path, monkeypatch, capsys) -> None:
    """`cpt --device cuda:N` is offered like merge's: on a CPU-only torch, merge's one-paragraph error and rc 2."""
    args = ["-o", tmp_path / "o", "--device", "cuda:0"]
    cpt_code, cpt_text = run_cli(monkeypatch, capsys, "cpt", base, "--corpus", corpus, *args)
    merge_code, merge_text = run_cli(monkeypatch, capsys, "merge", base, base, "--t", "0.5", *args)
    assert cpt_code == merge_code == 2 and cpt_text == merge_text, (cpt_text, merge_text)
    assert cpt_text.startswith("error: --device cuda:0 was requested but torch sees no CUDA GPU"), cpt_text
    with pytest.raises(SpearError, match="torch sees no CUDA GPU"):  # the Python API: the same check
        cpt(base, [corpus], tmp_path / "o", CptConfig(**{**FAST, "device": "cuda:1"}))
    assert not (tmp_path / "o").exists()


STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"
FINANCE = Path(__file__).resolve().parents[1] / "spear_mm" / "_data" / "demo" / "finance_train.txt"


@pytest.mark.slow
@pytest.mark.skipif(not (STORIES / "stories260K.bin").exists(), reason=f"stories260K not found under {STORIES}")
@pytest.mark.skipif(not FINANCE.exists(), reason=f"demo finance corpus not found at {FINANCE}")
def test_stories260k_cpt_forgets_stories(tmp_path: Path) -> None:
    """Real forgetting: CPT of the TinyStories model on finance text raises its loss on a children's story."""
    from test_llama2c import STORY

    from spear_mm.io.llama2c import convert_llama2c

    base = convert_llama2c(STORIES / "stories260K.bin", STORIES / "tok512.bin", tmp_path / "base")
    cfg = CptConfig(max_steps=40, lr=2e-3, seq_len=128, batch_size=8, logging_steps=10, progress=False, device="cpu")
    out = tmp_path / "finance"
    cpt(base, [FINANCE], out, cfg)

    def story_nll(path: Path) -> float:
        from transformers import AutoTokenizer

        ids = torch.tensor([AutoTokenizer.from_pretrained(path)(STORY).input_ids])
        with torch.no_grad():
            return AutoModelForCausalLM.from_pretrained(path)(input_ids=ids, labels=ids).loss.item()

    assert story_nll(out) > story_nll(base) + 0.2


def test_cuda_n_pins_the_trainer_to_that_gpu(tmp_path: Path, monkeypatch) -> None:
    """The Trainer alone takes cuda:0 (DataParallel over every GPU); for cuda:N its arguments name GPU N alone."""
    from spear_mm.training import cpt as cpt_module

    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)  # no GPU here: the choice is recorded
    args = cpt_module._training_args("cuda:1", output_dir=str(tmp_path), report_to="none")
    assert (args.device, args.n_gpu, chosen) == (torch.device("cuda", 1), 1, [1])
    plain = cpt_module._training_args("cpu", output_dir=str(tmp_path), report_to="none", use_cpu=True)
    assert type(plain).__name__ == "TrainingArguments" and plain.device == torch.device("cpu")

"""Issue 12, items 5–7: silent no-ops refused, raw tracebacks turned into one-paragraph errors (exit code 2),
and messages that name the right file. Every case runs the real CLI."""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import copy_pair, hidden_siblings, spear_subprocess
from safetensors.torch import load_file, save_file

LATIN1 = "Umsatz stieg um 12 % auf 4,2 Mrd. - Café Zürich\n".encode("latin-1")


def _set_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def _suite(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- 5. silent no-ops ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", ["q_proj", "attn.zz"])
def test_unknown_module_overrides_are_refused_with_the_valid_names(tiny_pair, tmp_path, cli, module):
    base, adapted = tiny_pair
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"num_layers: 6\nlayers:\n  - layer: 3\n    modules: {{{module}: 1.0}}\n")
    code, text = cli("merge", base, adapted, "--plan", plan, "-o", tmp_path / "merged")
    assert code == 2 and module in text and "valid module names" in text and "attn.q" in text, text
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize(
    "suite",
    [
        "name: s\ntask: []\ntasks:\n  - {name: t, kind: perplexity, loader: text, path: x.txt}\n",
        "name: s\ngroup: generl\ntasks:\n  - {name: t, kind: perplexity, loader: text, path: x.txt}\n",
        "name: s\ntasks:\n  - {name: t, kind: perplexity, loader: text, path: x.txt, group: generl}\n",
        "name: s\ntasks:\n  - {name: t, kind: perplexity, loader: text, path: x.txt, pth: y}\n",
    ],
    ids=["unknown-top-level-key", "suite-group-typo", "task-group-typo", "task-field-typo"],
)
def test_suite_typos_are_refused_naming_the_file(tiny_pair, tmp_path, cli, suite):
    (tmp_path / "x.txt").write_text("Some text for perplexity.\n\nAnother paragraph.\n")
    path = _suite(tmp_path / "suite.yaml", suite)
    code, text = cli("evaluate", tiny_pair[1], "--suite", path, "--data-dir", tmp_path, "-o", tmp_path / "r")
    assert code == 2 and str(path) in text, text
    assert "errors.pydantic.dev" not in text and "validation error" not in text  # no raw pydantic text
    assert not (tmp_path / "r").exists()


def test_a_scores_file_cut_short_is_refused(tiny_pair, tmp_path, cli):
    scores = tmp_path / "scores"
    assert cli("analyze", *tiny_pair, "-o", scores)[0] == 0
    data = json.loads((scores / "scores.json").read_text())
    data["layers"] = data["layers"][:4]
    (scores / "scores.json").write_text(json.dumps(data))
    code, text = cli("plan", scores, "-o", tmp_path / "plan.yaml")
    assert code == 2 and "scores.json" in text and "missing [4, 5]" in text, text
    assert not (tmp_path / "plan.yaml").exists()


@pytest.fixture()
def int_pair(tiny_pair, tmp_path) -> tuple[Path, Path]:
    base, adapted = copy_pair(tiny_pair, tmp_path)
    for folder, value in ((base, 7), (adapted, 9)):
        tensors = load_file(folder / "model.safetensors")
        tensors["model.layers.1.mlp.step_counter"] = torch.full((4,), value, dtype=torch.int32)
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return base, adapted


def test_an_int_tensor_is_restored_at_t1_and_kept_with_a_note_otherwise(int_pair, tmp_path, cli):
    base, adapted = int_pair
    code, text = cli("merge", base, adapted, "--t", "1", "-o", tmp_path / "t1")
    assert code == 0, text
    assert load_file(tmp_path / "t1" / "model.safetensors")["model.layers.1.mlp.step_counter"].tolist() == [7] * 4
    code, text = cli("merge", base, adapted, "--t", "0.5", "-o", tmp_path / "half")
    assert code == 0 and "integer tensor(s) cannot be interpolated" in text, text
    assert load_file(tmp_path / "half" / "model.safetensors")["model.layers.1.mlp.step_counter"].tolist() == [9] * 4
    report = json.loads((tmp_path / "half" / "merge_report.json").read_text())
    assert any("step_counter" in n for n in report["notes"])


def test_a_rope_theta_mismatch_is_warned_and_noted(tiny_pair, tmp_path, cli):
    base, adapted = copy_pair(tiny_pair, tmp_path)
    _set_config(adapted, rope_theta=500000.0)
    code, text = cli("merge", base, adapted, "--t", "0.5", "-o", tmp_path / "merged")
    assert code == 0 and "rope_theta" in text and "500000.0" in text, text
    notes = json.loads((tmp_path / "merged" / "merge_report.json").read_text())["notes"]
    assert any("rope_theta" in n for n in notes)


# -- 6. tracebacks become one-paragraph errors ---------------------------------------------------------------------
def _fail_writes(monkeypatch, under: Path, code: int) -> None:
    """The OS refuses writes under `under` with `code` (a read-only or full disk, which tests cannot mount)."""
    real_open, real_pwrite = os.open, os.pwrite

    def fake_open(path, flags, *args, **kw):
        if str(path).startswith(str(under)) and flags & (os.O_WRONLY | os.O_RDWR) and code == errno.EROFS:
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, *args, **kw)

    def fake_pwrite(fd, data, offset):
        if code == errno.ENOSPC:
            raise OSError(code, os.strerror(code))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "pwrite", fake_pwrite)


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC], ids=["EROFS", "ENOSPC"])
def test_a_read_only_or_full_disk_is_a_clear_error(tiny_pair, tmp_path, cli, monkeypatch, code):
    out = tmp_path / "disk" / "merged"
    out.parent.mkdir()
    _fail_writes(monkeypatch, out.parent, code)
    rc, text = cli("merge", *tiny_pair, "--t", "0.5", "-o", out)
    monkeypatch.undo()
    assert rc == 2 and errno.errorcode[code] in text and "Traceback" not in text, text
    assert not out.exists() and not [n for n in hidden_siblings(out) if "tmp" in n]


@pytest.mark.slow  # a fresh Python process under a file size limit: ~10 s on 2 cores
def test_a_file_size_limit_is_a_clear_error(tiny_pair, tmp_path):
    out = tmp_path / "merged"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # the model is ~1 MB

    proc = spear_subprocess(["merge", *map(str, tiny_pair), "--t", "0.5", "-o", str(out)], preexec_fn=limit,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    text = " ".join(proc.communicate(timeout=120)[0].split())
    assert proc.returncode == 2 and "EFBIG" in text and "ulimit -f" in text and "Traceback" not in text, text
    assert not out.exists() and not [n for n in hidden_siblings(out) if "tmp" in n]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch sees a GPU")
@pytest.mark.parametrize("command", ["analyze", "evaluate", "run"])
def test_cuda_on_a_cpu_only_torch_is_refused_before_any_folder(tiny_pair, tmp_path, cli, command):
    out = tmp_path / "out"
    args = {"analyze": [*tiny_pair], "evaluate": [tiny_pair[1], "--suite", "demo"], "run": [*tiny_pair]}[command]
    code, text = cli(command, *args, "-o", out, "--device", "cuda")
    assert code == 2 and "no CUDA GPU" in text, text
    assert not out.exists()


def test_non_utf8_plan_suite_and_data_files_are_named(tiny_pair, tmp_path, cli):
    plan = tmp_path / "plan.yaml"
    plan.write_bytes(b"num_layers: 6\n# " + LATIN1)
    code, text = cli("merge", *tiny_pair, "--plan", plan, "-o", tmp_path / "m")
    assert code == 2 and str(plan) in text and "not UTF-8" in text, text
    suite = tmp_path / "suite.yaml"
    suite.write_bytes(b"name: s\n# " + LATIN1 + b"tasks: []\n")
    code, text = cli("evaluate", tiny_pair[1], "--suite", suite, "-o", tmp_path / "r")
    assert code == 2 and str(suite) in text and "not UTF-8" in text, text
    data = tmp_path / "latin.txt"
    data.write_bytes(LATIN1 * 4)
    _suite(suite, f"name: s\ntasks:\n  - {{name: t, kind: perplexity, loader: text, path: {data}}}\n")
    code, text = cli("evaluate", tiny_pair[1], "--suite", suite, "-o", tmp_path / "r")
    assert code == 2 and str(data) in text and "not UTF-8" in text, text


def test_a_plan_that_is_a_folder_is_refused(tiny_pair, tmp_path, cli):
    code, text = cli("merge", *tiny_pair, "--plan", tmp_path, "-o", tmp_path / "m")
    assert code == 2 and "is a folder" in text, text


@pytest.mark.parametrize("args", [["--limit", "0"], ["--limit", "-5"], ["--threads", "-3"], ["--batch-size", "0"]])
def test_non_positive_counts_are_refused(tiny_pair, tmp_path, cli, args):
    code, text = cli("evaluate", tiny_pair[1], "--suite", "demo", "-o", tmp_path / "r", *args)
    assert code == 2 and args[0] in text and "at least 1" in text, text
    assert not (tmp_path / "r").exists()


def test_negative_threads_are_refused_by_merge_and_cpt(tiny_pair, tmp_path, cli):
    code, text = cli("merge", *tiny_pair, "--t", "0.5", "-o", tmp_path / "m", "--threads", "-3")
    assert code == 2 and "--threads -3" in text, text
    (tmp_path / "c.txt").write_text("text\n")
    code, text = cli("cpt", tiny_pair[0], "--corpus", tmp_path / "c.txt", "-o", tmp_path / "c", "--threads", "-3")
    assert code == 2 and "--threads -3" in text, text


def test_cpt_with_an_empty_corpus_is_a_clear_error(tiny_pair, tmp_path, cli):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    code, text = cli("cpt", tiny_pair[0], "--corpus", empty, "-o", tmp_path / "out", "--max-steps", "1")
    assert code == 2 and str(empty) in text and "0 tokens" in text, text
    assert not (tmp_path / "out").exists() and hidden_siblings(tmp_path / "out") == []


def test_evaluate_of_a_custom_code_model_is_a_clear_error(tmp_path, cli):
    model = tmp_path / "custom"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "my_secret_arch", "auto_map": {
        "AutoModelForCausalLM": "modeling_secret.SecretForCausalLM"}}))  # fmt: skip
    (model / "modeling_secret.py").write_text("raise SystemExit('remote code ran')\n")
    code, text = cli("evaluate", model, "--suite", "demo", "--limit", "2", "-o", tmp_path / "r")
    assert code == 2 and str(model) in text and "remote code" in text, text


# -- 7. wrong or raw messages -------------------------------------------------------------------------------------
def test_nan_in_the_base_names_the_base_file(tiny_pair, tmp_path, cli):
    base, adapted = copy_pair(tiny_pair, tmp_path)
    tensors = load_file(base / "model.safetensors")
    tensors["model.layers.2.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(tensors, base / "model.safetensors", metadata={"format": "pt"})
    code, text = cli("analyze", base, adapted, "-o", tmp_path / "scores")
    assert code == 2 and "NaN" in text and "model.layers.2.mlp.up_proj.weight" in text, text
    assert f"{base / 'model.safetensors'} (base)" in text and str(adapted / "model.safetensors") not in text, text


def test_the_free_space_message_gives_a_readable_size(tiny_pair, tmp_path, cli, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(10**9, 10**9 - 3000, 3000))
    code, text = cli("merge", *tiny_pair, "--t", "0.5", "-o", tmp_path / "m")
    monkeypatch.undo()
    assert code == 2 and "not enough disk space" in text and "0.00 GB" not in text, text
    assert "MB" in text and "3.00 kB free" in text, text

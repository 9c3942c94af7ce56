"""Issue 20 items 4–5 and issue 23 items 5–6: bad input is one paragraph (exit 2) naming the file and the fix,
before any work, and no input byte changes. Run configs (duplicated keys, alias bombs, strings for booleans,
planner options), plan options a policy ignores, scoring options, config.json, probe files, the planner's
cache, float16 overflow, crafted safetensors headers, ambiguous weight sets and pickled .bin files. Every case
runs the real CLI; sha256 of every input is compared before and after."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from conftest import copy_pair
from safetensors.torch import load_file, save_file

from spear_mm.scoring.layers import analyze

LATIN1 = "Umsatz stieg um 12 % auf 4,2 Mrd. - Café Zürich\n".encode("latin-1")
DOMAIN = "Revenue rose 12 percent to 4.2 billion dollars. The central bank held its rate steady. " * 12
GENERAL = "The committee met on Tuesday. Children played in the park while it rained all afternoon. " * 12


@pytest.fixture(scope="module")
def scored(tiny_pair, tmp_path_factory) -> Path:
    """The tiny pair's scores folder (read-only for the cases), with probe texts beside it."""
    root = tmp_path_factory.mktemp("scored")
    analyze(*tiny_pair, root / "scores", workers=1)
    (root / "domain.txt").write_text(DOMAIN)
    (root / "general.txt").write_text(GENERAL)
    return root


def _run_yaml(path: Path, pair, out: Path, extra: str) -> Path:
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"base: {pair[0]}\nadapted: {pair[1]}\nout: {out}\nsuites: demo\nlimit: 2\n{extra}")
    return path


# -- issue 20 item 5, issue 23 item 6: run configs -----------------------------------------------------------------
CONFIGS = {
    "duplicated key": ("limit: 3\n", ["line 6", "'limit' is given twice", "first on line 5"]),
    "string for a boolean": ('keep_all: "true"\n', ["keep_all", "valid boolean", "without quotes"]),
    "misspelled planner key": (
        "policies: [measured]\ndomain_probe: {domain}\nplanner: {{budgte: 3}}\n",
        ["planner.budgte", "Extra inputs", "Fields of planner", "budget"],
    ),
    "planner number as a string": (
        "policies: [measured]\ndomain_probe: {domain}\nplanner: {{budget: '3'}}\n",
        ["planner.budget", "valid integer", "whole number"],
    ),
    "planner options without measured": (
        "planner: {{max_domain_loss: 0.2}}\n",
        ["max_domain_loss", "used only by the measured policy", "add 'measured'"],
    ),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_a_run_config_mistake_fails_before_any_work(tiny_pair, scored, tmp_path, cli, untouched, case):
    extra, expected = CONFIGS[case]
    out = tmp_path / "run"
    config = _run_yaml(tmp_path / "in" / "run.yaml", tiny_pair, out, extra.format(domain=scored / "domain.txt"))
    check = untouched(*tiny_pair, config.parent, scored)
    code, text = cli("run", "--config", config)
    check()
    assert code == 2 and str(config) in text, text
    assert all(e in text for e in expected), text
    assert not out.exists()  # refused before the run folder, hence before any scoring


def test_a_yaml_alias_bomb_is_refused_unexpanded(tiny_pair, tmp_path, cli, untouched):
    """334 bytes of aliases that a plain YAML loader resolves to 10^8 strings (×10 per level; 6 levels already
    give 8 MB as JSON): refused at the first anchor, before anything is expanded."""
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefg", "bcdefgh", strict=True):
        levels.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 10) + "]")
    bomb = "\n".join(levels) + "\n"
    out = tmp_path / "run"
    config = _run_yaml(tmp_path / "in" / "run.yaml", tiny_pair, out, bomb)
    check = untouched(*tiny_pair, config.parent)
    code, text = cli("run", "--config", config)
    check()
    assert code == 2 and "anchors and aliases" in text and "line 6" in text, text
    assert not out.exists()


def test_planner_flags_without_the_measured_policy_are_refused(tiny_pair, tmp_path, cli, untouched):
    check = untouched(*tiny_pair)
    code, text = cli("run", *tiny_pair, "-o", tmp_path / "run", "--planner-budget", "3")
    check()
    assert code == 2 and "budget" in text and "only by the measured policy" in text, text
    assert not (tmp_path / "run").exists()


# -- issue 20 item 5: plan options a policy ignores -------------------------------------------------------------
IGNORED = {
    "uniform --k": (["--policy", "uniform", "--t", "0.5", "--k", "1"], ["does not use --k", "top-k and the presets"]),
    "balanced --layers": (["--policy", "balanced", "--layers", "1,1"], ["does not use --layers", "custom"]),
    "balanced --k --fraction": (["--policy", "balanced", "--k", "2", "--fraction", "0.5"], ["not both"]),
    "balanced --budget": (["--policy", "balanced", "--budget", "5"], ["--budget", "only by --policy measured"]),
    "measured --t": (["--policy", "measured", "--t", "0.5"], ["--policy measured does not use --t"]),
}


@pytest.mark.parametrize("case", list(IGNORED))
def test_plan_options_the_policy_ignores_are_refused(scored, tmp_path, cli, untouched, case):
    args, expected = IGNORED[case]
    check = untouched(scored)
    code, text = cli("plan", scored / "scores", "-o", tmp_path / "plan.yaml", *args)
    check()
    assert code == 2 and all(e in text for e in expected), text
    assert not (tmp_path / "plan.yaml").exists()


# -- issue 23 item 5: tracebacks -----------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", ["5", "nan", "-0.1"])
def test_analyze_alpha_out_of_range_is_one_paragraph(tiny_pair, tmp_path, cli, untouched, alpha):
    check = untouched(*tiny_pair)
    code, text = cli("analyze", *tiny_pair, "-o", tmp_path / "s", "--alpha", alpha)
    check()
    assert code == 2 and "--alpha" in text and "Traceback" not in text, text
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("content", ["latin-1", "json list"])
@pytest.mark.parametrize("command", ["inspect", "merge", "run"])
def test_a_broken_config_json_is_named(tiny_pair, tmp_path, cli, untouched, content, command):
    base, adapted = copy_pair(tiny_pair, tmp_path / "pair")
    data = b'{"model_type": "llama", "name": "' + LATIN1 + b'"}' if content == "latin-1" else b"[1, 2]"
    (adapted / "config.json").write_bytes(data)
    check = untouched(base, adapted)
    out = tmp_path / "out"
    args = {"inspect": [adapted], "merge": [base, adapted, "--t", "0.5", "-o", out], "run": [base, adapted, "-o", out]}
    code, text = cli(command, *args[command])
    check()
    assert code == 2 and str(adapted / "config.json") in text, text
    assert ("not UTF-8" if content == "latin-1" else "JSON object") in text, text
    assert not out.exists()


def test_invalid_bytes_in_the_planner_cache_are_evaluated_again(tiny_pair, scored, tmp_path, cli, untouched):
    plan = tmp_path / "plan.yaml"
    cache = tmp_path / "plan.yaml.probes" / "evaluations.jsonl"
    cache.parent.mkdir()
    cache.write_bytes(b"\xff\xfe\x00garbage\n[1, 2]\n" + b'{"key": "k", "general": NaN, "domain": 1}\n{"key": "cut')
    check = untouched(*tiny_pair, scored)
    code, text = cli("plan", scored / "scores", "--policy", "measured", "--domain-probe", scored / "domain.txt",
                     "--general-probe", scored / "general.txt", "--budget", "1", "--probe-units", "2",
                     "--probe-tokens", "64", "-o", plan)  # fmt: skip
    check()
    assert code == 0 and plan.is_file(), text
    rows = cache.read_bytes().split(b"\n")
    assert rows[3] == b'{"key": "cut' and json.loads(rows[4])["key"]  # the cut line stays alone; new rows whole


# -- issue 23 item 6: probe files --------------------------------------------------------------------------------
PROBES = {
    "random bytes": ("d.txt", bytes(range(256)) * 4, ["not UTF-8", "byte 0x80"]),
    "latin-1": ("d.txt", LATIN1 * 20, ["not UTF-8", "iconv"]),
    "blank": ("d.txt", b" \n\n\t\n", ["blank"]),
    "one word": ("d.txt", b"Revenue\n", ["token(s)", "at least 32"]),
    "text is a number": ("d.jsonl", b'{"text": 5}\n', ["line 1", "'text' field is a int"]),
}


@pytest.mark.parametrize("case", list(PROBES))
def test_probe_files_must_be_text_with_enough_tokens(tiny_pair, scored, tmp_path, cli, untouched, case):
    name, data, expected = PROBES[case]
    probe = tmp_path / "in" / name
    probe.parent.mkdir()
    probe.write_bytes(data)
    check = untouched(*tiny_pair, scored, probe.parent)
    code, text = cli("plan", scored / "scores", "--policy", "measured", "--domain-probe", probe,
                     "--general-probe", scored / "general.txt", "--budget", "1", "-o", tmp_path / "out" / "p.yaml")  # fmt: skip
    check()
    assert code == 2 and str(probe) in text and all(e in text for e in expected), text
    assert not (tmp_path / "out" / "p.yaml").exists()


def test_fp16_overflow_is_refused_naming_the_tensor(tiny_pair, tmp_path, cli, untouched):
    base, adapted = copy_pair(tiny_pair, tmp_path / "pair")
    sd = load_file(adapted / "model.safetensors")
    sd["model.layers.2.mlp.up_proj.weight"].view(-1)[7] = 3e5  # fine in fp32 and bf16, +inf in fp16
    save_file(sd, adapted / "model.safetensors", metadata={"format": "pt"})
    check = untouched(base, adapted)
    out = tmp_path / "m"
    code, text = cli("merge", base, adapted, "--t", "0.5", "--out-dtype", "fp16", "-o", out)
    check()
    assert code == 2 and "model.layers.2.mlp.up_proj.weight" in text and "float16" in text, text
    assert "--out-dtype bf16" in text and not out.exists()
    code, text = cli("merge", base, adapted, "--t", "0.5", "--out-dtype", "bf16", "-o", out)
    assert code == 0, text


def _overlap(file: Path, victim: str, source: str) -> None:
    """Rewrite the header so `victim` points at `source`'s bytes (same size): two tensors share bytes."""
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header[victim]["data_offsets"] = header[source]["data_offsets"]
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    file.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


@pytest.mark.parametrize("command", ["merge", "evaluate"])
def test_overlapping_tensor_bytes_are_refused(tiny_pair, tmp_path, cli, untouched, command):
    base, adapted = copy_pair(tiny_pair, tmp_path / "pair")
    _overlap(adapted / "model.safetensors", "model.layers.0.self_attn.o_proj.weight",
             "model.layers.0.self_attn.q_proj.weight")  # fmt: skip
    check = untouched(base, adapted)
    out = tmp_path / "out"
    args = [base, adapted, "--t", "0.5"] if command == "merge" else [adapted, "--suite", "demo", "--limit", "2"]
    code, text = cli(command, *args, "-o", out)
    check()
    assert code == 2 and "overlapping byte ranges" in text and "o_proj" in text, text
    assert not out.exists()


@pytest.mark.parametrize("command", ["merge", "evaluate"])
def test_shards_beside_a_stray_single_file_are_ambiguous(tiny_pair, tmp_path, cli, untouched, command):
    base, adapted = copy_pair(tiny_pair, tmp_path / "pair")
    sd = load_file(adapted / "model.safetensors")
    names = sorted(sd)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in halves.items():
        save_file({n: sd[n] for n in part}, adapted / file, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {n: f for f, part in halves.items() for n in part}}
    (adapted / "model.safetensors.index.json").write_text(json.dumps(index))  # model.safetensors stays: stray
    check = untouched(base, adapted)
    out = tmp_path / "out"
    args = [base, adapted, "--t", "0.5"] if command == "merge" else [adapted, "--suite", "demo", "--limit", "2"]
    code, text = cli(command, *args, "-o", out)
    check()
    assert code == 2 and "ambiguous weights" in text and "model.safetensors" in text and "Remove" in text, text
    assert not out.exists()


class _Payload:
    """Pickles as a call to os.mkdir(marker): full unpickling would create the marker folder."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_evaluate_refuses_a_pickled_bin_in_one_paragraph(tiny_pair, tmp_path, cli, untouched):
    model = copy_pair(tiny_pair, tmp_path / "pair")[1]
    marker = tmp_path / "code-ran"
    sd = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    torch.save({**sd, "payload": _Payload(marker)}, model / "pytorch_model.bin")
    check = untouched(model)
    out = tmp_path / "eval"
    code, text = cli("evaluate", model, "--suite", "demo", "--limit", "2", "-o", out)
    check()
    assert code == 2 and "pytorch_model.bin: refused to load" in text and "weights_only=True" in text, text
    assert "Traceback" not in text and not marker.exists() and not out.exists()

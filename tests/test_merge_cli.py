"""`spear-mm merge` / `spear-mm inspect` through the real entry point, and every bad input of the merge issue:
each gets a clear error naming the file or tensor, exit code 2, untouched inputs and no output."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from common import digest, fold, save_pair
from safetensors.torch import load_file, save_file

import spear_mm.cli
import spear_mm.cli.merge
from spear_mm.cli import main
from spear_mm.io.checkpoint import Checkpoint
from spear_mm.planning.plan import Plan, Provenance


@pytest.fixture()
def cli(monkeypatch, capsys) -> Callable[..., tuple[int, str]]:
    """Run `spear-mm ARGS` in process through `main()`; returns (exit code, stdout+stderr with spaces folded)."""
    monkeypatch.setattr(spear_mm.cli.console, "width", 4000)
    monkeypatch.setattr(spear_mm.cli.merge.out_console, "width", 4000)

    def run(*args) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["spear-mm", *map(str, args)])
        with pytest.raises(SystemExit) as exc:
            main()
        out = capsys.readouterr()
        return exc.value.code or 0, _fold(out.out + out.err)

    return run


_fold = fold


@pytest.fixture(scope="module")
def sharded_pair(tmp_path_factory) -> tuple[Path, Path]:
    return save_pair(tmp_path_factory.mktemp("sharded"), drift_layers={3: 0.5}, max_shard_size="100KB")


@pytest.fixture()
def pair(tiny_pair, tmp_path) -> tuple[Path, Path]:
    """A private, writable copy of the pico pair."""
    return shutil.copytree(tiny_pair[0], tmp_path / "base"), shutil.copytree(tiny_pair[1], tmp_path / "adapted")


def _edit(folder: Path, fn) -> None:
    sd = load_file(folder / "model.safetensors")
    fn(sd)
    save_file(sd, folder / "model.safetensors", {"format": "pt"})


class Payload:  # needs full unpickling: refused
    pass


def _poke(index: int, value: float):
    def fn(sd):
        sd["model.layers.3.self_attn.q_proj.weight"].view(-1)[index] = value

    return fn


def _shard(folder: Path, k: int) -> Path:
    return sorted(folder.glob("model-*.safetensors"))[k]


# Each case breaks a fresh copy of the pair: (base, adapted, tmp) -> (extra CLI args, expected message fragments).
def case_missing_folder(b, a, tmp):
    return [tmp / "nope", a, "--t", "0.5"], ["no such folder", "nope"]


def case_no_weights(b, a, tmp):
    (a / "model.safetensors").unlink()
    return [b, a, "--t", "0.5"], ["no weights found", str(a)]


def case_corrupt_header(b, a, tmp):
    raw = bytearray((a / "model.safetensors").read_bytes())
    raw[8:16] = b"#garbage"
    (a / "model.safetensors").write_bytes(bytes(raw))
    return [b, a, "--t", "0.5"], ["model.safetensors: corrupt safetensors header"]


def case_truncated_shard(b, a, tmp):
    sb, sa = (shutil.copytree(p, tmp / f"s{p.name}") for p in (b, a))
    shard = _shard(sa, 4)
    shard.write_bytes(shard.read_bytes()[:-1000])
    return [sb, sa, "--t", "0.5"], [f"{shard.name}: truncated safetensors file", "fetch the file again"]


def case_index_missing_shard(b, a, tmp):
    sb, sa = (shutil.copytree(p, tmp / f"s{p.name}") for p in (b, a))
    shard = _shard(sa, 2)
    shard.unlink()
    return [sb, sa, "--t", "0.5"], ["points at missing shard", shard.name]


def case_tensor_missing(b, a, tmp):
    _edit(a, lambda sd: sd.pop("model.layers.2.mlp.down_proj.weight"))
    return [b, a, "--t", "0.5"], ["'model.layers.2.mlp.down_proj.weight' is in the base", "missing from the adapted"]


def case_shape_mismatch(b, a, tmp):
    _edit(a, lambda sd: sd.update({"model.layers.4.mlp.up_proj.weight": torch.zeros(128, 63)}))
    return [b, a, "--t", "0.5"], ["'model.layers.4.mlp.up_proj.weight' has shape [128, 63] in the adapted model"]


def case_nan_in_adapted(b, a, tmp):
    _edit(a, _poke(7, float("nan")))
    return [b, a, "--t", "0.5"], ["'model.layers.3.self_attn.q_proj.weight'", "NaN or Inf", str(a)]


def case_inf_in_base(b, a, tmp):
    _edit(b, _poke(11, float("inf")))
    return [b, a, "--t", "0.5"], ["'model.layers.3.self_attn.q_proj.weight'", "NaN or Inf", str(b)]


def case_nan_in_kept_tensor(b, a, tmp):
    _edit(a, _poke(3, float("nan")))
    return [b, a, "--t", "0"], ["'model.layers.3.self_attn.q_proj.weight'", "NaN or Inf"]


def case_unsafe_bin(b, a, tmp):
    sd = load_file(a / "model.safetensors")
    (a / "model.safetensors").unlink()
    torch.save({**sd, "payload": Payload()}, a / "pytorch_model.bin")
    return [b, a, "--t", "0.5"], ["pytorch_model.bin: refused to load", "weights_only=True", "full unpickling"]


def case_plan_unknown_key(b, a, tmp):
    (tmp / "plan.yaml").write_text("num_layers: 6\ndefault_t: 0.5\nlayers:\n  - layer: 2\n    t: 0.5\n    tt: 1\n")
    return [b, a, "--plan", tmp / "plan.yaml"], ["plan.yaml", "line 6", "layers.0.tt", "Extra inputs"]


def case_plan_t_out_of_range(b, a, tmp):
    (tmp / "plan.yaml").write_text("num_layers: 6\nlayers:\n  - layer: 2\n    t: 1.5\n")
    return [b, a, "--plan", tmp / "plan.yaml"], ["line 4", "field 'layers.0.t'", "less than or equal to 1"]


def case_cli_t_out_of_range(b, a, tmp):
    return [b, a, "--t", "1.5"], ["--t 1.5 is outside [0, 1]"]


def case_plan_and_t(b, a, tmp):
    return [b, a], ["exactly one of --plan"]


def case_cuda_without_gpu(b, a, tmp):
    if torch.cuda.is_available():
        pytest.skip("torch sees a GPU here")
    return [b, a, "--t", "0.5", "--device", "cuda"], ["torch sees no CUDA GPU", "--device cpu"]


CASES = {name[5:]: fn for name, fn in dict(globals()).items() if name.startswith("case_")}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_clear_error_and_touches_nothing(case, pair, sharded_pair, tmp_path, cli):
    base, adapted = pair
    if case in ("truncated_shard", "index_missing_shard"):
        base, adapted = sharded_pair
    args, fragments = CASES[case](base, adapted, tmp_path)
    out = tmp_path / "merged"
    before = digest(tmp_path, *sharded_pair)
    code, text = cli("merge", *args, "-o", out)
    assert code == 2, text
    assert text.startswith("error:") or "error:" in text
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    assert digest(tmp_path, *sharded_pair) == before  # inputs untouched, nothing written anywhere
    assert not out.exists() and not list(tmp_path.glob(".merged.spear-mm-*"))


@pytest.mark.parametrize("where", ["equal", "inside", "parent"])
def test_output_overlapping_an_input_is_refused(pair, tmp_path, cli, where):
    base, adapted = pair
    out = {"equal": adapted, "inside": adapted / "merged", "parent": tmp_path}[where]
    before = digest(tmp_path)
    code, text = cli("merge", base, adapted, "-o", out, "--t", "0.5", "--force")
    assert code == 2 and "overlaps the input" in text and "never writes into or over an input" in text
    assert digest(tmp_path) == before


def test_non_empty_output_needs_force(pair, tmp_path, cli):
    base, adapted = pair
    out = tmp_path / "merged"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = digest(tmp_path)
    code, text = cli("merge", base, adapted, "-o", out, "--t", "0.5")
    assert code == 2 and "exists and is not empty" in text and "--force" in text
    assert digest(tmp_path) == before
    code, text = cli("merge", base, adapted, "-o", out, "--t", "0.5", "--force")
    assert code == 0, text
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").exists()


def test_merge_cli_writes_a_model_and_prints_a_summary(pair, tmp_path, cli):
    base, adapted = pair
    before = digest(base, adapted)
    code, text = cli("merge", base, adapted, "-o", tmp_path / "m", "--t", "0.5", "--threads", "1")
    assert code == 0, text
    assert "merged →" in text and "tensors 57" in text and "interpolated 57" in text and "LERP fallbacks" in text
    report = json.loads((tmp_path / "m" / "merge_report.json").read_text())
    assert report["n_merged"] == 57 and report["threads"] == 1
    assert digest(base, adapted) == before


def test_t1_gives_the_base_bit_for_bit_and_layers_only_keeps_the_rest(pair, tmp_path, cli):
    """`--t T` applies T to every tensor (as mergekit's slerp does); `--layers-only` is the old behaviour."""
    from safetensors.torch import load_file

    base, adapted = pair
    code, text = cli("merge", base, adapted, "-o", tmp_path / "m1", "--t", "1")
    assert code == 0, text
    want, got = load_file(base / "model.safetensors"), load_file(tmp_path / "m1" / "model.safetensors")
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) and got[k].dtype == want[k].dtype for k in want)
    code, text = cli("merge", base, adapted, "-o", tmp_path / "m2", "--t", "1", "--layers-only")
    assert code == 0, text
    got, adapted_sd = load_file(tmp_path / "m2" / "model.safetensors"), load_file(adapted / "model.safetensors")
    for k in want:
        src = want if ".layers." in k else adapted_sd
        assert torch.equal(got[k], src[k]), k
    assert not torch.equal(got["model.embed_tokens.weight"], want["model.embed_tokens.weight"])
    code, text = cli("merge", base, adapted, "-o", tmp_path / "m3", "--t", "1", "--all-tensors")
    assert code == 2 and "--all-tensors" in text and not (tmp_path / "m3").exists()  # removed: --t is every tensor


def test_dtype_mismatch_merges_and_says_so(pair, tmp_path, cli):
    base, adapted = pair
    _edit(adapted, lambda sd: sd.update({k: v.to(torch.bfloat16) for k, v in sd.items()}))
    code, text = cli("merge", base, adapted, "-o", tmp_path / "m", "--t", "0.5")
    assert code == 0, text
    assert "merged in float32" in text and "differ in dtype" in text


def test_dry_run_prints_every_tensor_and_writes_nothing(pair, tmp_path, cli):
    base, adapted = pair
    plan = tmp_path / "plan.yaml"
    plan.write_text("num_layers: 6\nlayers:\n  - {layer: 3, t: 0.7}\n  - {layer: 5, t: 1.0}\nembed: 0.25\n")
    before = digest(tmp_path)
    code, text = cli("merge", base, adapted, "-o", tmp_path / "m", "--plan", plan, "--dry-run")
    assert code == 0, text
    assert digest(tmp_path) == before and not (tmp_path / "m").exists()
    assert "dry run: slerp; 2/6 layers restored" in text
    assert "model.layers.3.self_attn.q_proj.weight 3 attn.q merge 0.7" in text
    assert "model.layers.5.mlp.down_proj.weight 5 mlp.down base 1" in text
    assert "model.layers.0.mlp.up_proj.weight 0 mlp.up keep 0" in text
    assert "model.embed_tokens.weight embed merge 0.25" in text
    assert "lm_head.weight head keep 0" in text
    names = Checkpoint.open(adapted).names
    assert len(names) == 57 and all(f" {name} " in text for name in names)


def test_inspect_prints_layers_modules_dtypes_and_sizes(tiny_pair, cli):
    code, text = cli("inspect", tiny_pair[1])
    assert code == 0, text
    assert "model_type=llama family=llama layers=6" in text
    for row in ("layer attn.q 6 0–5 [64, 64] float32", "layer mlp.up 6 0–5 [128, 64] float32", "embed embed 1"):
        assert row in text, row
    code, text = cli("inspect", tiny_pair[1] / "nope")
    assert code == 2 and "no such folder" in text


def test_console_script_exits_2_with_a_one_paragraph_error(tmp_path):
    exe = Path(sys.executable).with_name("spear-mm")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "spear_mm"]
    proc = subprocess.run([*cmd, "merge", tmp_path / "a", tmp_path / "b", "-o", tmp_path / "c", "--t", "0.5"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    err = _fold(proc.stderr)
    assert err.startswith("error:") and "no such folder" in err and "Traceback" not in err


def test_plan_of_another_pair_is_refused_unless_forced(pair, tmp_path, cli):
    base, adapted = pair
    right = Checkpoint.open(base).fingerprint()
    plan = Plan.uniform(0.5, 6, provenance=Provenance(policy="balanced", base="0123456789abcdef", adapted=None))
    plan_file = plan.save(tmp_path / "plan.yaml")
    code, text = cli("merge", base, adapted, "-o", tmp_path / "m", "--plan", plan_file)
    assert code == 2 and "another pair" in text and "0123456789abcdef" in text and right in text, text
    assert not (tmp_path / "m").exists()
    code, text = cli("merge", base, adapted, "-o", tmp_path / "m", "--plan", plan_file, "--force")
    assert code == 0, text
    good = Plan.uniform(0.5, 6, provenance=Provenance(policy="balanced", base=right)).save(tmp_path / "ok.yaml")
    code, text = cli("merge", base, adapted, "-o", tmp_path / "m2", "--plan", good)
    assert code == 0, text


def test_fingerprint_sees_a_changed_tensor_of_the_same_size(tmp_path):
    """One tensor's values change, the file's size does not: the resume keys and provenance must change."""
    model = tmp_path / "m"
    model.mkdir()
    tensors = {f"t{i}": torch.zeros(5000) for i in range(40)}
    save_file(tensors, model / "model.safetensors")
    (model / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 1}')
    before = Checkpoint.open(model).fingerprint()
    tensors["t17"][2500] = 1.0
    save_file(tensors, model / "model.safetensors")
    assert Checkpoint.open(model).fingerprint() != before

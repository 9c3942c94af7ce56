"""The streaming merge end to end on pico models: values vs a float64 reference SLERP, bit-exact end points,
sharding, .bin input, output folder contents, atomicity, and the Python API."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from common import make_tiny_model, save_pair
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import spear_mm.merging.streaming as streaming
from spear_mm.errors import SpearError
from spear_mm.io.checkpoint import Checkpoint
from spear_mm.io.pair import open_pair
from spear_mm.merging.merge import build_ops, iter_merged, merge, merge_into_model
from spear_mm.merging.methods import METHODS
from spear_mm.planning.plan import LayerRule, Plan
from spear_mm.progress import ProgressEvent
from spear_mm.statistics.collect import collect_statistics, load_probes

PLAN = Plan(
    num_layers=6,
    default_t=0.3,
    layers=[LayerRule(layer=1, t=0.0), LayerRule(layer=3, t=0.7), LayerRule(layer=5, t=1.0)],
    embed=0.5,
    head=0.0,
    final_norm=0.2,
)


def reference_slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Textbook SLERP in float64 (t = weight of the base b), LERP when |cos| > 0.9995 or a norm is 0."""
    if t == 0:
        return a
    if t == 1:
        return b
    a64, b64 = a.double(), b.double()
    na, nb = float(a64.norm()), float(b64.norm())
    cos = float((a64 * b64).sum()) / (na * nb) if na and nb else 1.0
    if abs(cos) > 0.9995:
        return ((1 - t) * a64 + t * b64).to(a.dtype)
    theta = math.acos(cos)
    out = (math.sin((1 - t) * theta) * a64 + math.sin(t * theta) * b64) / math.sin(theta)
    return out.to(a.dtype)


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out |= load_file(f)
    return out


def same_bits(x: torch.Tensor, y: torch.Tensor) -> bool:
    raw = lambda z: z.contiguous().reshape(-1).view(torch.uint8)  # noqa: E731 - bytes of any dtype
    return x.dtype == y.dtype and x.shape == y.shape and torch.equal(raw(x), raw(y))


@pytest.fixture(scope="module")
def merged(tiny_pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("merged") / "out"
    return merge(*tiny_pair, out, PLAN), out


def test_merged_model_loads_and_equals_reference_slerp(merged, tiny_pair):
    report, out = merged
    model = AutoModelForCausalLM.from_pretrained(out)
    loaded = model.state_dict()
    base, adapted = (tensors(p) for p in tiny_pair)
    pair = open_pair(*tiny_pair)
    got = tensors(out)
    assert set(got) == set(adapted)
    for name, p in pair.params.items():
        t = PLAN.t_for(p)
        ref = reference_slerp(adapted[name], base[name], t)
        if t in (0.0, 1.0):
            assert same_bits(got[name], ref), name
        else:
            torch.testing.assert_close(got[name], ref, rtol=2e-5, atol=1e-7, msg=name)
        assert torch.equal(loaded[name], got[name])
    stats = {s.name: s for s in report.tensors}
    merged_stats = [s for s in stats.values() if s.action == "merge"]
    assert report.n_merged == len(merged_stats) > 0
    assert 0 < report.n_lerp_fallback < report.n_merged  # the pair exercises both SLERP and the LERP fallback
    for s in merged_stats:
        a64, b64 = adapted[s.name].double(), base[s.name].double()
        assert s.cos == pytest.approx(float((a64 * b64).sum() / (a64.norm() * b64.norm())), abs=1e-6)
        assert s.rel_change == pytest.approx(float((a64 - b64).norm() / b64.norm()), rel=1e-2)
        assert s.lerp_fallback == (abs(s.cos) > 0.9995)
    assert stats["model.layers.1.mlp.up_proj.weight"].action == "keep"
    assert stats["model.layers.5.mlp.up_proj.weight"].action == "base"
    assert stats["lm_head.weight"].action == "keep" and stats["model.embed_tokens.weight"].t == 0.5


def test_output_folder_has_config_tokenizer_card_report_and_plan(merged, tiny_pair):
    report, out = merged
    adapted = tiny_pair[1]
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (adapted / name).read_bytes(), name
    assert Plan.load(out / "plan.yaml") == PLAN
    on_disk = json.loads((out / "merge_report.json").read_text())
    assert on_disk["n_tensors"] == len(on_disk["tensors"]) == report.n_tensors == 57
    assert on_disk["bytes_written"] == sum(v.numel() * v.element_size() for v in tensors(out).values())
    card = (out / "README.md").read_text()
    assert report.base_fingerprint in card and report.adapted_fingerprint in card
    assert PLAN.summary() in card and "t is the weight of the base" in card
    assert "spear-mm 0.1.0" in card and "| 3 | 0.7 |" in card
    assert not list(out.parent.glob(".out.spear-mm-*"))


def test_chat_template_and_extra_tokenizer_files_are_copied(tiny_pair, tmp_path):
    base, adapted = tiny_pair
    adapted = shutil.copytree(adapted, tmp_path / "adapted")
    (adapted / "chat_template.jinja").write_text("{{ messages }}")
    (adapted / "special_tokens_map.json").write_text("{}")
    (adapted / "training_args.bin").write_bytes(b"not copied")
    merge(base, adapted, tmp_path / "out", 0.5)
    assert (tmp_path / "out" / "chat_template.jinja").read_text() == "{{ messages }}"
    assert (tmp_path / "out" / "special_tokens_map.json").exists()
    assert not (tmp_path / "out" / "training_args.bin").exists()


def _cast_pair(tiny_pair, root: Path, dtype: torch.dtype) -> tuple[Path, Path]:
    folders = []
    for src in tiny_pair:
        dst = shutil.copytree(src, root / src.name)
        save_file({k: v.to(dtype) for k, v in load_file(src / "model.safetensors").items()}, dst / "model.safetensors")
        folders.append(dst)
    return folders[0], folders[1]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_t0_and_t1_reproduce_the_inputs_bit_for_bit(tiny_pair, tmp_path, dtype):
    base, adapted = _cast_pair(tiny_pair, tmp_path, dtype)
    for t, src in ((0.0, adapted), (1.0, base)):
        merge(base, adapted, tmp_path / f"t{t}", Plan.uniform(t, 6, include_non_layers=True))
        got, ref = tensors(tmp_path / f"t{t}"), tensors(src)
        assert set(got) == set(ref) and all(same_bits(got[k], ref[k]) for k in ref)
    report = merge(base, adapted, tmp_path / "half", Plan.uniform(0.5, 6, include_non_layers=True))
    half = tensors(tmp_path / "half")
    assert {v.dtype for v in half.values()} == {dtype} and report.n_merged == 57
    ref = reference_slerp(tensors(adapted)["model.layers.3.mlp.up_proj.weight"].float(),
                          tensors(base)["model.layers.3.mlp.up_proj.weight"].float(), 0.5)  # fmt: skip
    torch.testing.assert_close(half["model.layers.3.mlp.up_proj.weight"].float(), ref, rtol=1e-2, atol=1e-3)


def test_sharded_input_gives_sharded_output_with_the_same_values(merged, tmp_path):
    base, adapted = save_pair(tmp_path / "sharded", drift_layers={3: 0.5, 5: 0.5}, max_shard_size="100KB")
    assert len(list(adapted.glob("*.safetensors"))) > 3
    out = tmp_path / "out"
    merge(base, adapted, out, PLAN, max_shard_size="300KB")
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3 and not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    assert index["metadata"]["total_size"] == sum(s.stat().st_size for s in shards) - sum(
        8 + int.from_bytes(s.read_bytes()[:8], "little") for s in shards
    )
    biggest = max(v.numel() * v.element_size() for v in tensors(out).values())
    assert all(s.stat().st_size <= max(300_000, biggest) + 20_000 for s in shards)
    ref = tensors(merged[1])  # the same pico pair, saved unsharded: merging is independent of the layout
    got = tensors(out)
    assert set(got) == set(ref) and all(same_bits(got[k], ref[k]) for k in ref)
    AutoModelForCausalLM.from_pretrained(out)


def test_bin_input_merges_like_safetensors(merged, tiny_pair, tmp_path):
    folders = []
    for src in tiny_pair:
        dst = shutil.copytree(src, tmp_path / src.name, ignore=shutil.ignore_patterns("*.safetensors"))
        torch.save(load_file(src / "model.safetensors"), dst / "pytorch_model.bin")
        folders.append(dst)
    merge(*folders, tmp_path / "out", PLAN)
    got, ref = tensors(tmp_path / "out"), tensors(merged[1])
    assert set(got) == set(ref) and all(same_bits(got[k], ref[k]) for k in ref)


def test_chunked_path_equals_single_pass(tiny_pair, monkeypatch):
    pair = open_pair(*tiny_pair)
    plan = Plan.uniform(0.6, 6, include_non_layers=True)
    whole = {op.name: x for op, x, _ in iter_merged(pair, plan)}
    monkeypatch.setattr(streaming, "CHUNK", 1000)  # every matrix now takes the two-pass chunked path
    for op, x, stat in iter_merged(pair, plan):
        torch.testing.assert_close(x, whole[op.name], rtol=1e-6, atol=1e-8)
        assert stat.action == "merge"


@pytest.fixture()
def small_chunks(monkeypatch):
    """Chunks of 1,000 elements: every matrix of the pico models takes the streamed (chunk by chunk) path."""
    monkeypatch.setattr(streaming, "CHUNK", 1000)
    monkeypatch.setattr(streaming, "STREAM_ABOVE", 2000)


def test_large_tensors_stream_chunk_by_chunk_with_the_same_result(merged, tiny_pair, tmp_path, small_chunks):
    report = merge(*tiny_pair, tmp_path / "out", PLAN)
    got, ref = tensors(tmp_path / "out"), tensors(merged[1])
    pair = open_pair(*tiny_pair)
    assert set(got) == set(ref)
    for name, p in pair.params.items():
        if PLAN.t_for(p) in (0.0, 1.0):
            assert same_bits(got[name], ref[name]), name
        else:
            torch.testing.assert_close(got[name], ref[name], rtol=1e-6, atol=1e-9, msg=name)
    for s, r in zip(report.tensors, merged[0].tensors, strict=True):
        assert (s.name, s.action, s.lerp_fallback) == (r.name, r.action, r.lerp_fallback)
        assert (s.cos is None) == (r.cos is None)
        assert s.cos is None or s.cos == pytest.approx(r.cos, abs=1e-6)  # float32 block dots: ~1e-7
    AutoModelForCausalLM.from_pretrained(tmp_path / "out")


@pytest.mark.parametrize("t", [0.0, 0.5])
def test_nan_in_a_streamed_tensor_is_named(tiny_pair, tmp_path, small_chunks, t):
    base, adapted = tiny_pair
    bad = shutil.copytree(adapted, tmp_path / "adapted")
    sd = load_file(bad / "model.safetensors")
    sd["model.layers.2.mlp.down_proj.weight"].view(-1)[5000] = float("nan")
    save_file(sd, bad / "model.safetensors")
    with pytest.raises(SpearError, match=r"'model\.layers\.2\.mlp\.down_proj\.weight' in .*adapted.* NaN or Inf"):
        merge(base, bad, tmp_path / "out", Plan.uniform(t, 6))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("streamed", [False, True])
def test_vocab_extension_merges_shared_rows_and_keeps_new_ones(tiny_pair, tmp_path, request, streamed):
    if streamed:
        request.getfixturevalue("small_chunks")
    base = tiny_pair[0]
    rows = Checkpoint.open(base).config["vocab_size"]
    model = make_tiny_model("llama", vocab_size=rows)
    model.resize_token_embeddings(rows + 8, mean_resizing=False)
    model.save_pretrained(tmp_path / "extended")
    with pytest.raises(SpearError, match="allow-vocab-extension"):
        merge(base, tmp_path / "extended", tmp_path / "out", 0.5)
    plan = Plan.uniform(0.5, 6, include_non_layers=True)
    report = merge(base, tmp_path / "extended", tmp_path / "out", plan, allow_vocab_extension=True)
    got, a, b = tensors(tmp_path / "out"), tensors(tmp_path / "extended"), tensors(base)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert got[name].shape == (rows + 8, 64)
        torch.testing.assert_close(
            got[name][:rows], reference_slerp(a[name][:rows], b[name], 0.5), rtol=2e-5, atol=1e-7
        )
        assert same_bits(got[name][rows:].contiguous(), a[name][rows:].contiguous())
    assert any("vocabulary extension" in n for n in report.notes)
    AutoModelForCausalLM.from_pretrained(tmp_path / "out")


def test_dtype_mismatch_merges_in_float32_and_says_so(tiny_pair, tmp_path):
    base, adapted = tiny_pair
    half = shutil.copytree(adapted, tmp_path / "bf16")
    a = load_file(adapted / "model.safetensors")
    save_file({k: v.to(torch.bfloat16) for k, v in a.items()}, half / "model.safetensors")
    report = merge(base, half, tmp_path / "out", 0.5)
    assert any("float32" in n and "dtype" in n for n in report.notes)
    assert "float32" in (tmp_path / "out" / "README.md").read_text()
    got, b = tensors(tmp_path / "out"), tensors(base)
    name = "model.layers.3.self_attn.q_proj.weight"
    ref = reference_slerp(a[name].to(torch.bfloat16).float(), b[name], 0.5).to(torch.bfloat16)
    assert got[name].dtype == torch.bfloat16
    torch.testing.assert_close(got[name].float(), ref.float(), rtol=1e-2, atol=1e-4)


def test_interrupted_merge_leaves_no_output_and_keeps_an_old_one(tiny_pair, tmp_path):
    out = tmp_path / "out"

    def stop_after_5(event: ProgressEvent, seen=[]) -> None:  # noqa: B006 - a call counter
        seen.append(event.label)
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        merge(*tiny_pair, out, 0.5, progress=stop_after_5)
    assert not out.exists() and not list(tmp_path.iterdir())
    merge(*tiny_pair, out, 0.2)
    before = tensors(out)
    with pytest.raises(KeyboardInterrupt):
        merge(*tiny_pair, out, 0.9, force=True, progress=lambda e, seen=[]: stop_after_5(e, seen))
    after = tensors(out)
    assert all(same_bits(before[k], after[k]) for k in before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    merge(*tiny_pair, out, 0.9, force=True)
    assert json.loads((out / "merge_report.json").read_text())["plan_summary"].startswith("slerp; 6/6")


def test_merge_into_model_equals_the_written_folder(merged, tiny_pair):
    pair = open_pair(*tiny_pair)
    model = AutoModelForCausalLM.from_config(AutoModelForCausalLM.from_pretrained(tiny_pair[1]).config)
    stats = merge_into_model(pair, PLAN, model)
    assert len(stats) == 57
    ref = tensors(merged[1])
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in ref.items())


def test_build_tasks_checks_the_plan_and_resolves_actions(tiny_pair):
    pair = open_pair(*tiny_pair)
    with pytest.raises(SpearError, match="plan is for 4 layers but the model has 6"):
        build_ops(pair, Plan.uniform(0.5, 4))
    actions = {t.name: (t.action, t.t) for t in build_ops(pair, PLAN)}
    assert actions["model.layers.0.self_attn.q_proj.weight"] == ("merge", 0.3)
    assert actions["model.layers.1.self_attn.q_proj.weight"] == ("keep", 0.0)
    assert actions["model.layers.5.self_attn.q_proj.weight"] == ("base", 1.0)
    assert actions["model.norm.weight"] == ("merge", 0.2)


def test_threads_option_is_applied_and_restored(tiny_pair, tmp_path):
    before = torch.get_num_threads()
    report = merge(*tiny_pair, tmp_path / "out", 0.5, threads=2)
    assert report.threads == 2 and torch.get_num_threads() == before


def test_cuda_device_without_gpu_is_a_clear_error(tiny_pair, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("torch sees a GPU here")
    with pytest.raises(SpearError, match="torch sees no CUDA GPU"):
        merge(*tiny_pair, tmp_path / "out", 0.5, device="cuda")
    with pytest.raises(SpearError, match="not a torch device"):
        merge(*tiny_pair, tmp_path / "out", 0.5, device="gpu0")
    assert not (tmp_path / "out").exists()


def test_python_api_exports():
    import spear_mm
    from spear_mm import Checkpoint as C
    from spear_mm import Plan as P
    from spear_mm import merge as m

    assert C is Checkpoint and P is Plan
    assert m is merge and spear_mm.merge is merge  # the function, not a module of the same name
    assert "plan" in str(__import__("inspect").signature(m))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_streaming_merge_equals_the_registered_method_on_every_tensor(tiny_pair, tmp_path, method, small_chunks):
    """What `merge` writes (streamed, chunked where the method allows) is what the method's whole-tensor
    `merge` computes: the streaming loop and the tests share one implementation per method."""
    base, adapted = tiny_pair
    stats = None
    if METHODS[method].needs_statistics:  # they read probe statistics of the pair (collected here on a short text)
        stats = str(tmp_path / "stats")
        (tmp_path / "probe.txt").write_text("Revenue rose 12 percent to 4.2 billion dollars. " * 30)
        pair = open_pair(base, adapted)
        probes = load_probes(pair.adapted.path, tmp_path / "probe.txt", tmp_path / "probe.txt", 256)
        collect_statistics(pair, probes, stats, kinds=(method,))
    plan = Plan.uniform(0.4, 6, include_non_layers=True, method=method, density=0.3, statistics=stats)
    merge(base, adapted, tmp_path / "out", plan)
    got, a, b = tensors(tmp_path / "out"), tensors(adapted), tensors(base)
    kernel = METHODS[method].from_plan(plan)
    for name, x in got.items():
        want = kernel.merge(a[name], b[name], 0.4, name=name)
        assert torch.allclose(x.float(), want.float(), rtol=1e-5, atol=1e-6), (method, name)
    if method == "ties":  # trimming really happened: ~70% of each delta is dropped
        name = next(n for n in got if n.endswith("mlp.up_proj.weight"))
        kept = (got[name].float() - b[name].float()).ne(0).float().mean()
        assert 0.25 < float(kept) < 0.35

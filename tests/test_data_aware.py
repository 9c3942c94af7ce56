"""Data-aware restoration (issue 18): probe statistics (`spear-mm stats`) and the `regmean` / `fisher` merge methods.

The analytic pico case: one linear layer whose general and domain inputs lie in orthogonal subspaces, with CPT's
damage only in the general subspace and its gain only in the domain subspace. RegMean at α = 0.5 must give the
base's outputs on general inputs and the adapted outputs on domain inputs (to float precision); uniform SLERP
cannot (it moves both halfway).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from spear_mm.errors import SpearError
from spear_mm.io.pair import open_pair
from spear_mm.merging.merge import merge
from spear_mm.merging.methods.regmean import regmean_projection
from spear_mm.planning.plan import Plan
from spear_mm.statistics.collect import collect_statistics, load_probes, site_groups
from spear_mm.statistics.store import META, ProbeInfo, Statistics, StatsMeta, read_meta

TEXT = "Revenue rose 12 percent to 4.2 billion dollars. The central bank held its policy rate. " * 20
GENERAL = "The quick brown fox jumps over the lazy dog. Water boils at 100 degrees Celsius. " * 20
Q = "model.layers.0.self_attn.q_proj.weight"


def _read(folder: Path, name: str) -> torch.Tensor:
    index = folder / "model.safetensors"
    with safe_open(str(index), framework="pt") as f:
        return f.get_tensor(name)


def _probes(tmp: Path) -> tuple[Path, Path]:
    (tmp / "g.txt").write_text(GENERAL)
    (tmp / "d.txt").write_text(TEXT)
    return tmp / "g.txt", tmp / "d.txt"


@pytest.fixture(scope="module")
def stats(tiny_pair, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("stats")
    g, d = _probes(tmp)
    pair = open_pair(*tiny_pair)
    collect_statistics(pair, load_probes(pair.adapted.path, g, d, 512), tmp / "stats", kinds=("regmean", "fisher"))
    return tmp / "stats"


# -- the analytic pico case ---------------------------------------------------------------------------------------
def _planted(tiny_pair, tmp: Path, shrink_exact: bool) -> tuple[Path, Path, Path, torch.Tensor, torch.Tensor]:
    """A copy of the pair whose q_proj is W_base + damage on the general subspace + gain on the domain subspace,
    and a statistics folder whose Grams put general and domain inputs in those orthogonal subspaces."""
    base, adapted = tmp / "base", tmp / "adapted"
    shutil.copytree(tiny_pair[0], base)
    shutil.copytree(tiny_pair[0], adapted)
    w_base = _read(base, Q)
    width = w_base.shape[1]
    g = torch.Generator().manual_seed(0)
    # an orthonormal basis; with shrink < 1 the subspaces must be coordinate-aligned to stay block-diagonal
    basis = torch.eye(width) if shrink_exact else torch.linalg.qr(torch.randn(width, width, generator=g))[0]
    vg, vd = basis[:, : width // 2], basis[:, width // 2 :]
    damage = torch.randn(w_base.shape[0], width, generator=g) @ vg @ vg.T
    gain = torch.randn(w_base.shape[0], width, generator=g) @ vd @ vd.T
    tensors = {}
    with safe_open(str(adapted / "model.safetensors"), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118
            tensors[name] = f.get_tensor(name)
    tensors[Q] = (w_base + damage + gain).contiguous()
    save_file(tensors, adapted / "model.safetensors", metadata={"format": "pt"})
    xg = torch.randn(200, width // 2, generator=g) @ vg.T  # general inputs: in span(vg)
    xd = torch.randn(200, width // 2, generator=g) @ vd.T
    folder = tmp / "stats"
    folder.mkdir()
    site = Q.removesuffix(".weight")
    save_file({site: (xg.T @ xg / 200).contiguous()}, folder / "grams.general.0.safetensors")
    save_file({site: (xd.T @ xd / 200).contiguous()}, folder / "grams.domain.0.safetensors")
    pair = open_pair(base, adapted)
    info = ProbeInfo(source="synthetic", tokens=200, key="0")
    meta = StatsMeta(key="planted", base_fingerprint=pair.base.fingerprint(),
                     adapted_fingerprint=pair.adapted.fingerprint(), kinds=["regmean"],
                     probes={"general": info, "domain": info}, sites={Q: site},
                     files={"general/" + site: "grams.general.0.safetensors",
                            "domain/" + site: "grams.domain.0.safetensors"})  # fmt: skip
    (folder / META).write_text(meta.model_dump_json())
    return base, adapted, folder, xg, xd


@pytest.mark.parametrize("shrink", [1.0, 0.9])
def test_regmean_restores_general_and_keeps_domain_exactly(tiny_pair, tmp_path, shrink):
    base, adapted, folder, xg, xd = _planted(tiny_pair, tmp_path, shrink_exact=shrink < 1)
    plan = Plan.uniform(0.5, 6, method="regmean", shrink=shrink)
    merge(base, adapted, tmp_path / "rm", plan, statistics=folder)
    merge(base, adapted, tmp_path / "sl", Plan.uniform(0.5, 6))
    wb, wa = _read(base, Q).double(), _read(adapted, Q).double()
    wr, ws = _read(tmp_path / "rm", Q).double(), _read(tmp_path / "sl", Q).double()
    xg, xd = xg.double(), xd.double()
    scale = (xg @ wb.T).abs().max()
    assert ((xg @ wr.T) - (xg @ wb.T)).abs().max() / scale < 1e-5  # base outputs on general inputs
    assert ((xd @ wr.T) - (xd @ wa.T)).abs().max() / scale < 1e-5  # adapted outputs on domain inputs
    # uniform SLERP moves both halfway: far from the base on general inputs and from the adapted on domain ones
    assert ((xg @ ws.T) - (xg @ wb.T)).abs().max() / scale > 0.1
    assert ((xd @ ws.T) - (xd @ wa.T)).abs().max() / scale > 0.1
    # tensors without statistics (here: all but q_proj) are SLERPed at the same t
    k = "model.layers.0.self_attn.k_proj.weight"
    assert torch.equal(_read(tmp_path / "rm", k), _read(tmp_path / "sl", k))


def test_alpha_zero_and_one_give_adapted_and_base(tiny_pair, tmp_path, stats):
    for alpha, want in ((0.0, tiny_pair[1]), (1.0, tiny_pair[0])):
        out = tmp_path / f"a{alpha}"
        merge(*tiny_pair, out, Plan.uniform(alpha, 6, include_non_layers=True, method="regmean"), statistics=stats)
        for name in (Q, "model.layers.3.mlp.down_proj.weight", "model.embed_tokens.weight"):
            assert torch.equal(_read(out, name), _read(want, name)), (alpha, name)


def test_projection_limits():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 8, generator=g)
    gg, gd = x.T @ x, (x @ torch.randn(8, 8, generator=g)).T @ x
    gd = gd @ gd.T
    assert torch.allclose(regmean_projection(gg, gd, 0.0, 0.9), torch.eye(8, dtype=torch.float64), atol=1e-7)
    assert regmean_projection(gg, gd, 1.0, 0.9).abs().max() == 0
    # the same Gram on both sides: RegMean is linear interpolation
    assert torch.allclose(regmean_projection(gg, gg, 0.3, 0.9), 0.7 * torch.eye(8, dtype=torch.float64), atol=1e-7)


# -- statistics ---------------------------------------------------------------------------------------------------
def test_grams_are_the_inputs_second_moments(tiny_pair, stats):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    st = Statistics(stats)
    # q/k/v read one input, gate/up another: they share a site
    sites = st.meta.sites
    assert sites[Q] == sites[Q.replace("q_proj", "k_proj")] == sites[Q.replace("q_proj", "v_proj")]
    assert sites["model.layers.2.mlp.gate_proj.weight"] == sites["model.layers.2.mlp.up_proj.weight"]
    assert sites["model.layers.2.mlp.down_proj.weight"] != sites["model.layers.2.mlp.up_proj.weight"]
    assert len(sites) == 6 * 7
    # the general side: the base model's first-layer attention input on the general probe, by hand
    tok = AutoTokenizer.from_pretrained(tiny_pair[1])
    model = AutoModelForCausalLM.from_pretrained(tiny_pair[0], dtype=torch.float32).eval()
    ids = tok(GENERAL, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = (ids * 2)[: st.meta.probes["general"].tokens]
    with torch.no_grad():
        xs = [model.model.layers[0].input_layernorm(model.model.embed_tokens(torch.tensor([ids[i : i + 256]])))[0]
              for i in range(0, len(ids), 256)]  # fmt: skip
    x = torch.cat(xs)
    want = x.T @ x / x.shape[0]
    got = st.gram("general", Q)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * want.abs().max())


def test_fisher_is_collected_for_every_parameter(tiny_pair, stats):
    st = Statistics(stats)
    for side in ("general", "domain"):
        f = st.fisher(side, Q)
        assert f is not None and f.shape == (64, 64) and (f >= 0).all() and f.sum() > 0
    assert st.fisher("general", "model.embed_tokens.weight") is not None


def test_fisher_merge_weighs_each_parameter(tiny_pair, tmp_path, stats):
    merge(*tiny_pair, tmp_path / "f", Plan.uniform(0.5, 6, method="fisher"), statistics=stats)
    st = Statistics(stats)
    fg, fd = st.fisher("general", Q), st.fisher("domain", Q)
    wb, wa, wf = _read(tiny_pair[0], Q), _read(tiny_pair[1], Q), _read(tmp_path / "f", Q)
    share = (wf - wa) / (wb - wa)  # the base's share per entry: where F_g ≫ F_d, toward the base
    mask = (wb - wa).abs() > 1e-4
    hi, lo = (fg > 10 * fd) & mask, (fd > 10 * fg) & mask
    assert hi.any() and lo.any()
    assert share[hi].mean() > 0.85 and share[lo].mean() < 0.15


def test_groups_give_the_same_grams_and_resume(tiny_pair, tmp_path, stats):
    g, d = _probes(tmp_path)
    pair = open_pair(*tiny_pair)
    probes = load_probes(pair.adapted.path, g, d, 512)
    one = collect_statistics(pair, probes, tmp_path / "s", max_gram_bytes=3 * 4 * 64 * 64)
    parts = {f for f in one.files.values()}
    assert len(parts) > 2  # several passes per side
    ref = Statistics(stats)
    st = Statistics(tmp_path / "s")
    for w in (Q, "model.layers.5.mlp.down_proj.weight"):
        assert torch.allclose(st.gram("domain", w), ref.gram("domain", w), rtol=1e-5, atol=1e-6)
    # resume: a cut collection (no stats.json, one part missing) recomputes only what is missing
    (tmp_path / "s" / META).unlink()
    gone = sorted(parts)[1]
    (tmp_path / "s" / gone).unlink()
    kept = tmp_path / "s" / sorted(parts)[0]
    before = kept.stat().st_mtime_ns
    again = collect_statistics(pair, probes, tmp_path / "s", max_gram_bytes=3 * 4 * 64 * 64)
    assert again.key == one.key and (tmp_path / "s" / gone).is_file() and kept.stat().st_mtime_ns == before
    # a changed probe changes the key and collects anew
    (tmp_path / "d.txt").write_text(TEXT.replace("Revenue", "Profit"))
    other = collect_statistics(pair, load_probes(pair.adapted.path, g, tmp_path / "d.txt", 512), tmp_path / "s",
                               max_gram_bytes=3 * 4 * 64 * 64)  # fmt: skip
    assert other.key != one.key and kept.stat().st_mtime_ns != before


def test_site_groups_respect_the_budget():
    from spear_mm.statistics.collect import Linear

    layers = [Linear(f"m{i}", f"m{i}.weight", 10, False) for i in range(5)]
    sites = {x.weight: x.module for x in layers}
    assert site_groups(layers, sites, 4 * 100 * 2) == [["m0", "m1"], ["m2", "m3"], ["m4"]]
    assert site_groups(layers, sites, 1) == [[f"m{i}"] for i in range(5)]  # one site bigger than the budget: alone


def test_statistics_of_another_pair_are_refused(tiny_pair, tmp_path, stats):
    other = tmp_path / "other"
    shutil.copytree(tiny_pair[1], other)
    (other / "config.json").write_text(json.dumps({**json.loads((other / "config.json").read_text()), "x": 1}))
    with safe_open(str(other / "model.safetensors"), framework="pt") as f:
        tensors = {n: f.get_tensor(n) for n in f.keys()}  # noqa: SIM118
    tensors[Q] = tensors[Q] * 1.01
    save_file(tensors, other / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SpearError, match="another pair"):
        merge(tiny_pair[0], other, tmp_path / "m", Plan.uniform(0.5, 6, method="regmean"), statistics=stats)
    with pytest.raises(SpearError, match="names no statistics folder"):
        merge(*tiny_pair, tmp_path / "m2", Plan.uniform(0.5, 6, method="regmean"))
    assert not (tmp_path / "m").exists() and not (tmp_path / "m2").exists()


def test_per_unit_methods(tiny_pair, tmp_path, stats):
    plan = Plan.uniform(0.5, 6, method="slerp", unit_methods={"layer.2.attn": "regmean"})
    merge(*tiny_pair, tmp_path / "u", plan, statistics=stats)
    merge(*tiny_pair, tmp_path / "s", Plan.uniform(0.5, 6))
    merge(*tiny_pair, tmp_path / "r", Plan.uniform(0.5, 6, method="regmean"), statistics=stats)
    q2, up2 = "model.layers.2.self_attn.q_proj.weight", "model.layers.2.mlp.up_proj.weight"
    assert torch.equal(_read(tmp_path / "u", q2), _read(tmp_path / "r", q2))
    assert not torch.equal(_read(tmp_path / "u", q2), _read(tmp_path / "s", q2))
    assert torch.equal(_read(tmp_path / "u", up2), _read(tmp_path / "s", up2))
    with pytest.raises(ValueError, match="not a unit"):
        Plan.uniform(0.5, 6, unit_methods={"layer.9": "regmean"})


def test_stats_cli(tiny_pair, tmp_path, monkeypatch, capsys):
    from common import digest, run_cli

    g, d = _probes(tmp_path)
    before = digest(*tiny_pair)
    code, out = run_cli(monkeypatch, capsys, "stats", *tiny_pair, "--domain", d, "--general", g, "--tokens", "256",
                        "-o", tmp_path / "s")  # fmt: skip
    assert code == 0 and "merge with them" in out and (tmp_path / "s" / META).is_file()
    code, out = run_cli(monkeypatch, capsys, "stats", *tiny_pair, "--domain", d, "--general", g, "--tokens", "256",
                        "-o", tmp_path / "s")  # fmt: skip
    assert code == 0 and "reused" in out  # same key: nothing collected again
    d.write_text("Credit spreads widened. " + TEXT)  # within the first 256 tokens: a new key
    code, out = run_cli(monkeypatch, capsys, "stats", *tiny_pair, "--domain", d, "--general", g, "--tokens", "256",
                        "-o", tmp_path / "s")  # fmt: skip
    assert code == 2 and "another probe or kind" in out and "--force" in out
    old_key = read_meta(tmp_path / "s").key
    code, out = run_cli(monkeypatch, capsys, "stats", *tiny_pair, "--domain", d, "--general", g, "--tokens", "256",
                        "-o", tmp_path / "s", "--force")  # fmt: skip
    assert code == 0 and read_meta(tmp_path / "s").key != old_key  # collected anew on the changed probe
    code, out = run_cli(monkeypatch, capsys, "stats", *tiny_pair, "--domain", d, "--kinds", "svd", "-o", tmp_path / "x")
    assert code == 2 and "--kinds" in out
    code, out = run_cli(monkeypatch, capsys, "stats", *tiny_pair, "--domain", d, "-o", tiny_pair[0] / "stats")
    assert code == 2 and not (tiny_pair[0] / "stats").exists()
    code, out = run_cli(monkeypatch, capsys, "merge", *tiny_pair, "--t", "0.5", "--method", "regmean", "--stats",
                        tmp_path / "s", "-o", tmp_path / "m")  # fmt: skip
    assert code == 0 and (tmp_path / "m" / "model.safetensors").is_file()
    assert digest(*tiny_pair) == before

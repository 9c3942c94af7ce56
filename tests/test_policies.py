"""Policies pick the right layers and t; plans round-trip; mergekit and freeze exports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from spear_mm.errors import SpearError
from spear_mm.planning.exports import (
    apply_freeze_plan,
    mergekit_yaml,
    to_freeze_yaml,
    to_mergekit_config,
    write_freeze_plan,
)
from spear_mm.planning.freeze import load_freeze_yaml
from spear_mm.planning.plan import Plan
from spear_mm.planning.policies import count_layers, describe, make_plan
from spear_mm.scoring.table import LayerScore, ScoreConfig, ScoreTable, Timing

MERGEKIT_PY = Path(
    os.environ.get("SPEAR_MM_MERGEKIT_PY", Path(__file__).parents[1] / "bench/_work/mergekit-venv/bin/python")
)


def table_with(scores: list[float]) -> ScoreTable:
    """A ScoreTable whose layer i has score scores[i] (ranks follow)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    ranks = {layer: r + 1 for r, layer in enumerate(order)}
    layers = [LayerScore(layer=i, score=s, rank=ranks[i]) for i, s in enumerate(scores)]
    return ScoreTable(
        base="/b",
        adapted="/a",
        base_fingerprint="b" * 16,
        adapted_fingerprint="a" * 16,
        model_type="llama",
        num_layers=len(scores),
        config=ScoreConfig(),
        modules=[],
        layers=layers,
        timing=Timing(weights_seconds=0.0),
    )


SCORES22 = [float((7 * i) % 22) for i in range(22)]  # a permutation: layer 19 has the top score 21


def restored(plan: Plan) -> dict[int, float]:
    return {i: plan.layer_t(i) for i in plan.restored_layers()}


@pytest.mark.parametrize(
    ("fraction", "n", "want"),
    [(0.1, 22, 2), (0.25, 22, 6), (0.5, 22, 11), (0.1, 6, 1), (0.25, 6, 2), (0.0, 6, 0), (1.0, 6, 6)],
)
def test_count_rounds_half_up_with_at_least_one(fraction, n, want):
    assert count_layers(fraction, n) == want


def test_presets_restore_the_top_of_the_ranking():
    table = table_with(SCORES22)
    ranking = table.ranking()
    assert restored(make_plan(table, "conservative")) == dict.fromkeys(ranking[:2], 0.5)
    assert restored(make_plan(table, "balanced")) == dict.fromkeys(ranking[:6], 0.7)
    aggressive = restored(make_plan(table, "aggressive"))
    assert aggressive == {**dict.fromkeys(ranking[:6], 0.9), **dict.fromkeys(ranking[6:11], 0.6)}
    assert restored(make_plan(table, "balanced", fraction=0.5, t=0.8)) == dict.fromkeys(ranking[:11], 0.8)


def test_explicit_policies():
    table = table_with([0.1, 3.0, 0.2, 2.0, 0.0, 1.0])
    assert restored(make_plan(table, "uniform", t=0.3)) == dict.fromkeys(range(6), 0.3)
    assert restored(make_plan(table, "top-k", k=2, t=1.0)) == {1: 1.0, 3: 1.0}
    assert restored(make_plan(table, "fraction", fraction=0.5, t=0.4)) == {1: 0.4, 3: 0.4, 5: 0.4}
    custom = make_plan(table, "custom", layer_ts=[0, 0.5, 0, 0, 0, 1])
    assert restored(custom) == {1: 0.5, 5: 1.0}
    for bad in (
        dict(policy="uniform"),
        dict(policy="custom", layer_ts=[0.1]),
        dict(policy="top-k", t=0.5),
        dict(policy="nope"),
    ):
        with pytest.raises(SpearError):
            make_plan(table, **bad)
    with pytest.raises(SpearError, match="outside"):
        make_plan(table, "balanced", t=1.5)


def test_plan_records_scores_and_round_trips_through_yaml(tmp_path):
    table = table_with([0.1, 3.0, 0.2, 2.0, 0.0, 1.0])
    plan = make_plan(table, "balanced", embed=0.2)
    assert plan.provenance.scores_hash == table.content_hash()
    assert plan.provenance.base == "b" * 16 and plan.provenance.policy == "balanced"
    assert {r.layer: r.rank for r in plan.layers}[1] == 1
    assert Plan.load(plan.save(tmp_path / "plan.yaml")) == plan
    assert describe(plan)[0][:4] == (1, 0.7, "restore", 1)


def test_mergekit_config_semantics(tiny_pair):
    base, adapted = tiny_pair
    table = table_with([0.1, 3.0, 0.2, 2.0, 0.0, 1.0])
    plan = make_plan(table, "top-k", k=2, t=0.75, head=0.5)
    cfg = to_mergekit_config(plan, base, adapted)
    assert cfg["merge_method"] == "slerp" and cfg["base_model"] == str(adapted)
    # one single-layer slice per layer with scalar t (mergekit interpolates lists by tensor position)
    assert [s["sources"][0]["layer_range"] for s in cfg["slices"]] == [[i, i + 1] for i in range(6)]
    assert all([x["model"] for x in s["sources"]] == [str(adapted), str(base)] for s in cfg["slices"])
    assert [s["parameters"]["t"][-1] for s in cfg["slices"]] == [{"value": v} for v in [0, 0.75, 0, 0.75, 0, 0]]
    explicit = {r["filter"]: r["value"] for r in cfg["parameters"]["t"][:-1]}
    assert explicit == {"model.embed_tokens.weight": 0.0, "lm_head.weight": 0.5, "model.norm.weight": 0.0}
    assert all(s["parameters"]["t"][:-1] == cfg["parameters"]["t"][:-1] for s in cfg["slices"])
    uniform = to_mergekit_config(make_plan(table, "uniform", t=0.3), base, adapted)
    assert len(uniform["slices"]) == 1 and uniform["slices"][0]["sources"][0]["layer_range"] == [0, 6]


def _mergekit_or_skip() -> Path:
    if not MERGEKIT_PY.exists():
        pytest.skip(f"mergekit venv not found at {MERGEKIT_PY} (set SPEAR_MM_MERGEKIT_PY; see docs/scoring.md)")
    probe = subprocess.run([str(MERGEKIT_PY), "-c", "import mergekit, yaml"], capture_output=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"mergekit is not importable from {MERGEKIT_PY} (venv incomplete?): {probe.stderr[-300:]!r}")
    return MERGEKIT_PY


def test_mergekit_accepts_the_export(tiny_pair, tmp_path):
    py = _mergekit_or_skip()
    plan = make_plan(table_with([0.1, 3.0, 0.2, 2.0, 0.0, 1.0]), "aggressive")
    path = tmp_path / "mk.yaml"
    path.write_text(mergekit_yaml(plan, *tiny_pair))
    code = (
        "import sys, yaml; from mergekit.config import MergeConfiguration as M; "
        "c = M.model_validate(yaml.safe_load(open(sys.argv[1]))); print(c.merge_method)"
    )
    res = subprocess.run([str(py), "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "slerp"


@pytest.mark.slow
def test_mergekit_run_restores_exactly_the_planned_layers(tiny_pair, tmp_path):
    py = _mergekit_or_skip()
    base, adapted = tiny_pair
    plan = make_plan(table_with([0.1, 3.0, 0.2, 2.0, 0.0, 1.0]), "top-k", k=2, t=1.0)
    (tmp_path / "mk.yaml").write_text(mergekit_yaml(plan, base, adapted))
    cli = Path(py).parent / "mergekit-yaml"
    res = subprocess.run(
        [str(cli), str(tmp_path / "mk.yaml"), str(tmp_path / "out")], capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    from safetensors.torch import load_file

    merged = {}
    for f in sorted((tmp_path / "out").glob("*.safetensors")):
        merged |= load_file(f)
    b, a = load_file(base / "model.safetensors"), load_file(adapted / "model.safetensors")
    for name, w in merged.items():
        want = b[name] if any(f"layers.{i}." in name for i in (1, 3)) else a[name]
        assert torch.equal(w, want.to(w.dtype)), name


def test_freeze_yaml_and_apply_freeze_plan(tiny_pair, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_pair[1])
    plan = make_plan(table_with([0.1, 3.0, 0.2, 2.0, 0.0, 1.0]), "custom", layer_ts=[0, 1, 0, 1, 0.5, 0])
    text = to_freeze_yaml(plan)
    assert "unfrozen_parameters" in yaml.safe_load(text)
    summary = apply_freeze_plan(model, plan)
    assert summary.frozen_layers == [1, 3]
    for name, p in model.named_parameters():
        frozen = ".layers.1." in name or ".layers.3." in name
        assert p.requires_grad != frozen, name
    names = [n for n, _ in model.named_parameters()]
    path = write_freeze_plan(plan, tmp_path / "freeze.yaml", names)
    assert len(load_freeze_yaml(path)) == len([n for n in names if ".layers.1." not in n and ".layers.3." not in n])
    with pytest.raises(SpearError, match="layers"):
        apply_freeze_plan(model, Plan.uniform(1.0, 4))


def test_scores_json_is_what_the_plan_hashes(tiny_pair, tmp_path):
    table = table_with([0.1, 3.0, 0.2, 2.0, 0.0, 1.0])
    table.save(tmp_path)
    assert make_plan(ScoreTable.load(tmp_path)).provenance.scores_hash == table.content_hash()
    assert json.loads((tmp_path / "scores.json").read_text())["num_layers"] == 6
    assert sys.version_info >= (3, 10)


def test_cli_plan_with_exports_and_pair_check(tiny_pair, tmp_path):
    from typer.testing import CliRunner

    from spear_mm.cli import app
    from spear_mm.scoring.layers import analyze

    scores = tmp_path / "scores"
    analyze(*tiny_pair, scores, workers=1)
    plan, mk, fr = tmp_path / "plan.yaml", tmp_path / "mk.yaml", tmp_path / "freeze.yaml"
    args = [
        "plan",
        str(scores),
        "-o",
        str(plan),
        "--policy",
        "aggressive",
        "--export-mergekit",
        str(mk),
        "--export-freeze",
        str(fr),
    ]
    res = CliRunner().invoke(app, [*args, "--base", str(tiny_pair[0]), "--adapted", str(tiny_pair[1])])
    assert res.exit_code == 0, res.output
    loaded = Plan.load(plan)
    units = ScoreTable.load(scores).unit_ranking()
    assert len(units) == 9  # 6 layers, embed, head, final norm: aggressive restores round(0.5·9) = 5 units
    restored_units = [u for u in units if loaded.unit_t(u) > 0]
    assert loaded.provenance.policy == "aggressive" and restored_units == units[:5]
    assert {"layer.3", "layer.5"} <= set(restored_units)
    assert set(loaded.units) == {"embed", "head", "final_norm"} and all(u.rank for u in loaded.units.values())
    assert yaml.safe_load(mk.read_text())["merge_method"] == "slerp"
    assert load_freeze_yaml(fr)
    swapped = CliRunner().invoke(app, [*args, "--base", str(tiny_pair[1]), "--adapted", str(tiny_pair[0])])
    assert swapped.exit_code != 0 and "another pair" in str(swapped.exception)


@pytest.mark.slow
def test_mergekit_run_matches_spear_merge_for_fractional_per_layer_t(tiny_pair, tmp_path):
    """Every tensor gets its own layer's t in mergekit, not a value interpolated between list entries."""
    py = _mergekit_or_skip()
    base, adapted = tiny_pair
    plan = make_plan(table_with([0.1, 3.0, 0.2, 2.0, 0.0, 1.0]), "custom", layer_ts=[0, 0.3, 0.55, 0.9, 0.2, 0.7])
    (tmp_path / "mk.yaml").write_text(mergekit_yaml(plan, base, adapted))
    res = subprocess.run(
        [str(Path(py).parent / "mergekit-yaml"), str(tmp_path / "mk.yaml"), str(tmp_path / "mk")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    from safetensors.torch import load_file

    from spear_mm.merging.merge import merge

    merge(base, adapted, tmp_path / "ours", plan, force=True)  # the table's fingerprints are synthetic: --force
    ours = load_file(tmp_path / "ours" / "model.safetensors")
    theirs = {}
    for f in sorted((tmp_path / "mk").glob("*.safetensors")):
        theirs |= load_file(f)
    assert set(theirs) <= set(ours)
    for name, w in theirs.items():
        rel = float((w.double() - ours[name].double()).norm() / ours[name].double().norm().clamp_min(1e-12))
        assert rel < 1e-5, (name, rel)


def test_mergekit_export_needs_the_adapted_model_names(tmp_path):
    """No silent Llama-name fallback: an unreadable adapted folder is a clear error naming it."""
    plan = Plan.uniform(0.5, 4)
    with pytest.raises(SpearError, match="reads them from .*nowhere"):
        to_mergekit_config(plan, tmp_path / "base", tmp_path / "nowhere")

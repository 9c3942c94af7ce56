"""The measured planner with `granularity: sublayer`: attention and MLP of a layer are separate units.

The planted pair here (`save_sublayer_pair`) puts the general damage into the *attention* of the layer whose *MLP*
carries the domain gain: a per-layer plan cannot undo one without the other; the sub-layer plan restores the
attention alone.
"""

from __future__ import annotations

import pytest
import torch
from planted_pair import DOMAIN_LAYER, open_planted, save_sublayer_pair

from spear_mm.measured.planner import PlannerConfig, measured_plan, plan_units
from spear_mm.measured.probe import ProbeEvaluator
from spear_mm.planning.plan import Plan
from spear_mm.planning.policies import plan_from_unit_ts
from spear_mm.scoring.units import split_layers, units_of

ATTN, MLP = f"layer.{DOMAIN_LAYER}.attn", f"layer.{DOMAIN_LAYER}.mlp"


@pytest.fixture(scope="module")
def same_layer(tmp_path_factory):
    root = tmp_path_factory.mktemp("same-layer")
    return open_planted(save_sublayer_pair(root))


def test_sublayer_units_partition_every_tensor(same_layer):
    _, pair, _, _ = same_layer
    units = units_of(pair.params, sublayers=True)
    names = [n for ns in units.values() for n in ns]
    assert sorted(names) == sorted(pair.params) and len(names) == len(set(names))
    assert all(".self_attn." in n for n in units[ATTN])
    assert any("layernorm" in n for n in units[MLP]) and not any(".self_attn." in n for n in units[MLP])
    assert not any(u.count(".") == 1 and u.startswith("layer.") for u in units)
    assert split_layers(["embed", "layer.3", "final_norm"]) == ["embed", "layer.3.attn", "layer.3.mlp", "final_norm"]


def test_sublayer_plan_merges_like_the_evaluator(same_layer, tmp_path):
    """The Plan built from sub-layer t's gives every tensor the t the probe evaluator used."""
    from transformers import AutoModelForCausalLM

    from spear_mm.merging.merge import merge_into_model

    paths, pair, probes, scores = same_layer
    ev = ProbeEvaluator(pair, probes, sublayers=True)
    ts = {ATTN: 1.0, MLP: 0.25, "layer.3.attn": 0.5, "embed": 0.5}
    r = ev.evaluate(ts)
    plan = plan_from_unit_ts(scores, ts, split_layers(scores.unit_ranking()), policy="measured", params={})
    plan.save(tmp_path / "plan.yaml")
    plan = Plan.load(tmp_path / "plan.yaml")  # what a user reviews and merges
    rule = plan.layers[DOMAIN_LAYER]
    assert rule.t == 0.25 and rule.modules and set(rule.modules.values()) == {1.0}
    assert plan.layers[3].t == 0.0 and set(plan.layers[3].modules.values()) == {0.5}
    ref = AutoModelForCausalLM.from_pretrained(paths["adapted"], dtype=torch.float32).eval()
    merge_into_model(pair, plan, ref)
    with torch.no_grad():
        want = sum(float(ref(input_ids=w, labels=w).loss) * (w.shape[1] - 1) for w in probes.general)
    assert r.general == pytest.approx(want / sum(w.shape[1] - 1 for w in probes.general), abs=1e-5)


def test_sublayer_planner_restores_the_attention_and_keeps_the_mlp(same_layer):
    _, pair, probes, scores = same_layer
    config = PlannerConfig(budget=12, max_domain_loss=0.1)
    whole = plan_units(ProbeEvaluator(pair, probes), scores.unit_ranking(), config)
    ev = ProbeEvaluator(pair, probes, sublayers=True)
    split = plan_units(ev, split_layers(scores.unit_ranking()), config)
    adapted = ev.evaluate({})
    assert ev.evaluate({ATTN: 1.0}).general < adapted.general - 0.05  # the planted answer helps…
    assert ev.evaluate({MLP: 1.0}).domain > adapted.domain + 0.3  # …and the MLP holds the domain gain
    assert split.feasible and split.ts.get(ATTN, 0) >= 0.9 and split.ts.get(MLP, 0) <= 0.25
    assert split.value > whole.value + 0.05  # the per-layer planner cannot separate them


def test_measured_plan_with_sublayers_records_module_overrides(same_layer, tmp_path):
    paths, pair, _, scores = same_layer
    config = PlannerConfig(budget=4, granularity="sublayer")
    plan = measured_plan(scores, pair, paths["general"], paths["domain"], config, cache_path=tmp_path / "c.jsonl")
    assert plan.provenance.params["granularity"] == "sublayer"
    rule = plan.layers[DOMAIN_LAYER]
    assert rule.modules and min(rule.modules.values()) >= 0.9 and rule.t <= 0.25
    assert {e.unit for e in plan.measurement.effects} >= {ATTN, MLP}


def test_a_sublayer_plan_reports_the_t_of_each_half(same_layer):
    _, _, _, scores = same_layer
    ts = {ATTN: 0.75, MLP: 0.25, "embed": 0.5}
    plan = plan_from_unit_ts(scores, ts, split_layers(scores.unit_ranking()), policy="measured", params={})
    assert {u: plan.unit_t(u) for u in ts} == ts
    assert plan.unit_t(f"layer.{DOMAIN_LAYER}") == 0.25 and plan.unit_t("layer.3.attn") == 0.0


def test_plan_cli_granularity(same_layer, tmp_path, monkeypatch, capsys):
    import sys

    from spear_mm.cli import main

    paths, *_ = same_layer
    scores = paths["base"].parent / "scores"
    base = ["spear-mm", "plan", str(scores), "--policy", "measured", "--budget", "2",
            "--domain-probe", str(paths["domain"]), "--general-probe", str(paths["general"])]  # fmt: skip
    monkeypatch.setattr(sys, "argv", [*base, "-o", str(tmp_path / "bad.yaml"), "--granularity", "tensor"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and "--granularity" in capsys.readouterr().err
    assert not (tmp_path / "bad.yaml").exists()
    monkeypatch.setattr(sys, "argv", [*base, "-o", str(tmp_path / "p.yaml"), "--granularity", "sublayer"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert (exc.value.code or 0) == 0, capsys.readouterr().out
    plan = Plan.load(tmp_path / "p.yaml")
    assert plan.provenance.params["granularity"] == "sublayer" and plan.unit_t(ATTN) >= 0.9


def test_kinds_group_the_units_by_what_they_are():
    from spear_mm.measured.search import group_ts, kinds_of, tiers_of

    units = ["layer.0.attn", "embed", "layer.0.mlp", "layer.1.attn", "final_norm", "layer.1.mlp"]
    kinds = kinds_of(units)
    assert kinds == {"attn": ["layer.0.attn", "layer.1.attn"], "embed": ["embed"],
                     "mlp": ["layer.0.mlp", "layer.1.mlp"], "final_norm": ["final_norm"]}  # fmt: skip
    assert group_ts(kinds, {"attn": 0.7, "mlp": 0.0, "embed": 0.5, "final_norm": 0.5}) == {
        "layer.0.attn": 0.7, "layer.1.attn": 0.7, "embed": 0.5, "final_norm": 0.5}  # fmt: skip
    assert kinds_of(["layer.3", "embed"]) == {"layer": ["layer.3"], "embed": ["embed"]}
    assert tiers_of(units, 3) == {"tier0": units[:2], "tier1": units[2:4], "tier2": units[4:]}


def test_kinds_refinement_separates_attention_from_mlp(same_layer):
    """On the pair whose general damage is in attention, one t for all attention and one for all MLP suffice."""
    _, pair, probes, scores = same_layer
    ev = ProbeEvaluator(pair, probes, sublayers=True)
    res = plan_units(ev, split_layers(scores.unit_ranking()), PlannerConfig(budget=12, refine="kinds"))
    start = plan_units(ev, split_layers(scores.unit_ranking()), PlannerConfig(budget=0))
    assert res.feasible and res.value >= start.value - 1e-9 and res.ts.get(MLP, 0) <= 0.25

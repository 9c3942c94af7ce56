"""The measured planner on a pico pair with a planted answer (tests/planted_pair.py): restoring the damaged layer
and the embeddings fixes the general probe; restoring the trained layer loses the domain gain."""

from __future__ import annotations

import re
import sys

import pytest
import torch
from planted_pair import DAMAGED_LAYER, DOMAIN_LAYER, open_planted, save_planted_pair

from spear_mm.errors import SpearError
from spear_mm.measured.planner import PlannerConfig, greedy_knapsack, plan_units
from spear_mm.measured.probe import ProbeEvaluator
from spear_mm.measured.search import efficiency_order, group_ts, tiers_of
from spear_mm.planning.plan import Plan, UnitEffect
from spear_mm.scoring.layers import analyze

DAMAGED, TRAINED = f"layer.{DAMAGED_LAYER}", f"layer.{DOMAIN_LAYER}"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    return open_planted(save_planted_pair(root))


def test_the_planted_pair_has_the_answer_it_claims(planted):
    """The fixture itself: CPT helped the domain probe, hurt the general one; the planted plan fixes both."""
    _, pair, probes, _ = planted
    ev = ProbeEvaluator(pair, probes)
    base, adapted = ev.evaluate(dict.fromkeys(ev.units, 1.0)), ev.evaluate({})
    fixed = ev.evaluate({DAMAGED: 1.0, "embed": 1.0})
    assert adapted.domain < base.domain - 0.3  # a real domain gain (trained layer)
    assert adapted.general > base.general + 0.02  # real general damage
    assert fixed.general <= base.general + 0.005 and fixed.domain <= adapted.domain  # planted plan fixes it
    assert ev.evaluate({TRAINED: 1.0}).domain > adapted.domain + 0.3  # restoring the trained layer costs


def test_evaluator_merges_in_memory_like_merge_into_model_and_caches(planted, tmp_path):
    from transformers import AutoModelForCausalLM

    from spear_mm.merging.merge import merge_into_model

    paths, pair, probes, _ = planted
    cache = tmp_path / "cache.jsonl"
    ev = ProbeEvaluator(pair, probes, cache_path=cache)
    ts = {DAMAGED: 0.5, "embed": 1.0, "final_norm": 0.3}
    r = ev.evaluate(ts)
    ref = AutoModelForCausalLM.from_pretrained(paths["adapted"], dtype=torch.float32).eval()
    plan = Plan(num_layers=6).with_unit_ts(ts)
    merge_into_model(pair, plan, ref)
    with torch.no_grad():
        want = sum(float(ref(input_ids=w, labels=w).loss) * (w.shape[1] - 1) for w in probes.general)
    assert r.general == pytest.approx(want / sum(w.shape[1] - 1 for w in probes.general), abs=1e-5)
    assert ev.evaluations == 1 and len(cache.read_text().splitlines()) == 1
    again = ProbeEvaluator(pair, probes, cache_path=cache)  # a resumed run: served from the cache
    assert again.evaluate(ts).cached and again.evaluations == 0
    assert again.evaluate({**ts, "head": 0.0}).cached  # t = 0 is "not restored": the same plan
    with pytest.raises(SpearError, match="unknown unit"):
        ev.evaluate({"layer.99": 1.0})


def test_knapsack_takes_free_then_efficient_options_within_budget():
    e = [
        UnitEffect(unit="a", t=1.0, general_recovered=1.0, domain_lost=-0.1),  # free
        UnitEffect(unit="b", t=1.0, general_recovered=1.0, domain_lost=0.5),
        UnitEffect(unit="c", t=0.5, general_recovered=0.4, domain_lost=0.1),
        UnitEffect(unit="c", t=1.0, general_recovered=0.6, domain_lost=0.4),
    ]
    assert greedy_knapsack(e, ["a", "b", "c"], budget=0.2, need=None) == [("a", 1.0), ("c", 0.5)]
    assert greedy_knapsack(e, ["a", "b", "c"], budget=0.6, need=None) == [("a", 1.0), ("c", 0.5), ("b", 1.0)]
    # c from 0.5 to 1 adds 0.2 recovered for 0.3 spent: taken once the budget allows
    assert greedy_knapsack(e, ["a", "b", "c"], budget=0.8, need=None)[-1] == ("c", 1.0)
    assert greedy_knapsack(e, ["a", "b", "c"], budget=0.0, need=1.0) == [("a", 1.0)]


def test_efficiency_order_and_tiers():
    e = [
        UnitEffect(unit="a", t=1.0, general_recovered=0.2, domain_lost=0.1),  # ratio 2
        UnitEffect(unit="b", t=1.0, general_recovered=0.5, domain_lost=-0.1),  # free
        UnitEffect(unit="c", t=0.5, general_recovered=0.3, domain_lost=0.03),  # ratio 10 (its best option)
        UnitEffect(unit="c", t=1.0, general_recovered=0.4, domain_lost=0.4),
        UnitEffect(unit="d", t=1.0, general_recovered=-0.1, domain_lost=0.0),  # recovers nothing
    ]
    ranked = efficiency_order(e, ["d", "e", "a", "b", "c"])
    assert ranked == ["b", "c", "a", "d", "e"]  # free, then by ratio; nothing-recovering and unmeasured last
    tiers = tiers_of(ranked, 3)
    assert group_ts(tiers, {"tier0": 1.0, "tier1": 0.5, "tier2": 0.0}) == {"b": 1.0, "c": 1.0, "a": 0.5, "d": 0.5}
    assert group_ts(tiers, dict.fromkeys(tiers, 0.3)) == dict.fromkeys(ranked, 0.3)  # equal tiers: the uniform plan


@pytest.mark.parametrize("refine", ["tiers", "kinds", "units"])
def test_refinement_never_returns_a_worse_plan_than_its_start(planted, refine):
    _, pair, probes, scores = planted
    ev = ProbeEvaluator(pair, probes)
    res = plan_units(ev, scores.unit_ranking(), PlannerConfig(budget=6, refine=refine))
    start = plan_units(ev, scores.unit_ranking(), PlannerConfig(budget=0))
    assert res.feasible and res.value >= start.value - 1e-9


def test_planner_finds_the_planted_plan(planted):
    _, pair, probes, scores = planted
    ev = ProbeEvaluator(pair, probes)
    res = plan_units(ev, scores.unit_ranking(), PlannerConfig(budget=20))
    assert res.greedy == {"embed": 1.0, DAMAGED: 1.0}  # the knapsack alone finds it
    assert res.ts.get("embed", 0) >= 0.9 and res.ts.get(DAMAGED, 0) >= 0.9 and res.ts.get(TRAINED, 0) == 0
    assert res.feasible
    planted_r = ev.evaluate({DAMAGED: 1.0, "embed": 1.0})
    assert res.result.general <= planted_r.general + 1e-6  # at least as good as the planted answer
    assert ev.evaluations <= 2 + 2 * len(ev.units) + 1 + 3 + 20 + 4  # refs, effects, knapsack, seeds, budget
    target = plan_units(ev, scores.unit_ranking(), PlannerConfig(probe_recovery=0.8, budget=10))
    assert target.feasible and target.ts.get(TRAINED, 0) == 0


def test_plan_cli_measured_writes_the_measurement_and_resumes(planted, tmp_path, monkeypatch, capsys):
    from spear_mm.cli import main

    paths, *_ = planted
    out = tmp_path / "plan.yaml"
    argv = ["spear-mm", "plan", str(_scores_dir(planted)), "-o", str(out), "--policy", "measured", "--budget", "6",
            "--domain-probe", str(paths["domain"]), "--general-probe", str(paths["general"])]  # fmt: skip
    for attempt in range(2):  # the second replaces the plan (--force) and resumes from the probe cache
        monkeypatch.setattr(sys, "argv", argv + ["--force"] * attempt)
        with pytest.raises(SystemExit) as exc:
            main()
        captured = capsys.readouterr()
        text = captured.out
        assert (exc.value.code or 0) == 0, text
        # not a terminal: a line per probe evaluation, `n/total probe evaluations, elapsed, ETA`
        counts = re.findall(r"measured planner: probe evaluations: (\d+)/(\d+) \(\d+%\), elapsed", captured.err)
        assert counts and [int(d) for d, _ in counts] == list(range(1, len(counts) + 1)), captured.err
        assert all(int(d) <= int(t) for d, t in counts)
        plan = Plan.load(out)
        m = plan.measurement
        assert plan.provenance.policy == "measured" and m.budget == 6
        assert plan.unit_t("embed") >= 0.9 and plan.unit_t(DAMAGED) >= 0.9 and plan.unit_t(TRAINED) == 0
        assert {e.unit for e in m.effects} == {f"layer.{i}" for i in range(6)} | {"embed", "head", "final_norm"}
        assert m.nll_general["plan"] < m.nll_general["adapted"] and "measured planner" in text
        if attempt == 0:
            first = m.evaluations
            assert first > 0
        else:  # resumed: every evaluation comes from the cache
            assert m.evaluations == 0 and m.cached >= first
    assert "measurement:" in out.read_text() and "effects:" in out.read_text()


def test_plan_cli_measured_without_domain_probe_is_a_clear_error(planted, tmp_path, monkeypatch, capsys):
    from spear_mm.cli import main

    monkeypatch.setattr(sys, "argv", ["spear-mm", "plan", str(_scores_dir(planted)), "-o", str(tmp_path / "p.yaml"),
                                      "--policy", "measured"])  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and "--domain-probe" in capsys.readouterr().err
    assert not (tmp_path / "p.yaml").exists()


def test_plan_cli_bad_planner_option_names_the_flag_and_value(planted, tmp_path, monkeypatch, capsys):
    from spear_mm.cli import main

    paths, *_ = planted
    argv = ["spear-mm", "plan", str(_scores_dir(planted)), "-o", str(tmp_path / "p.yaml"), "--policy", "measured"]
    monkeypatch.setattr(sys, "argv", [*argv, "--domain-probe", str(paths["domain"]), "--budget", "-1"])
    with pytest.raises(SystemExit) as exc:
        main()
    err = " ".join(capsys.readouterr().err.split())
    assert exc.value.code == 2 and "--budget -1: Input should be greater than or equal to 0." in err, err
    assert not (tmp_path / "p.yaml").exists()


def test_rank_by_restore_gain_needs_the_probe_scores(planted):
    from spear_mm.planning.policies import make_plan

    *_, scores = planted
    with pytest.raises(SpearError, match="--ground-truth"):
        make_plan(scores, "balanced", rank_by="restore_gain")
    with pytest.raises(SpearError, match="--rank-by must be one of score, restore_gain, activation_drift"):
        make_plan(scores, "balanced", rank_by="gain")


def test_rank_by_restore_gain_restores_what_helps(planted, tmp_path):
    """With the ground truth, the presets restore the units whose restoration helps the probe most; the trained
    layer (restoring it changes the general probe little) drops out of the top."""
    from spear_mm.planning.policies import make_plan

    paths, *_ = planted
    scores = analyze(paths["base"], paths["adapted"], workers=1, probe=paths["general"], ground_truth=True)
    gains = {u.unit: u.restore_gain for u in scores.units}
    assert all(g is not None for g in gains.values())
    ranking = scores.unit_ranking("restore_gain")
    assert ranking[:2] == sorted(gains, key=lambda u: -gains[u])[:2] and set(ranking[:2]) == {"embed", DAMAGED}
    plan = make_plan(scores, "balanced", rank_by="restore_gain")  # round(0.25 · 9) = 2 units
    assert {u for u in ranking if plan.unit_t(u) > 0} == {"embed", DAMAGED}
    assert plan.provenance.params["rank_by"] == "restore_gain"


def _scores_dir(planted):
    return planted[0]["base"].parent / "scores"

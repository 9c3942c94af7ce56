"""The registries are the one source of merge methods, policies and planner refinements: a method and a policy
rule registered by a module outside the package (imported before the CLI parses its command line) are listed by
`spear-mm ls`, accepted by `merge --method` and `plan --policy/--method`, validated in plan YAML, and refused by
the mergekit export by name, like the built-ins."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
from common import run_cli
from safetensors.torch import load_file

from spear_mm.errors import SpearError
from spear_mm.measured.objective import REFINEMENTS, PlannerConfig
from spear_mm.merging.methods import METHODS, MergeMethod, register
from spear_mm.pipeline.jobs import plan_effect_hash
from spear_mm.planning.exports import mergekit_yaml
from spear_mm.planning.plan import Plan
from spear_mm.planning.policies import POLICY_RULES, register_policy

PLUGIN = "spear_mm_test_plugin"
PLUGIN_SOURCE = '''
"""A user module: two merge methods (one with an option) and one policy rule, registered by being imported."""

from spear_mm.merging.methods import MergeMethod, register
from spear_mm.planning.policies import register_policy


@register
class Halfway(MergeMethod):
    name = "halfway"
    summary = "half the linear step toward the base: (1 - t/2)·adapted + (t/2)·base"

    def coefficients(self, stats, t):
        return 1.0 - t / 2, t / 2, False


@register
class Scaled(MergeMethod):
    name = "scaled"
    summary = "the linear step toward the base times `gain`"
    options = ("gain",)

    def __init__(self, gain: float = 1.0):
        self.gain = gain

    def coefficients(self, stats, t):
        return 1.0 - t * self.gain, t * self.gain, False


@register_policy("first-layer", "layer 0 only, at --t", {"t"})
def first_layer(policy, ask):
    return {"layer.0": ask.t}, {"t": ask.t}
'''


@pytest.fixture()
def plugin(tmp_path, monkeypatch):
    """The plugin module, written to a temporary folder and imported; its registrations are undone afterwards."""
    (tmp_path / f"{PLUGIN}.py").write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(PLUGIN)
    yield module
    METHODS.pop("halfway", None)
    METHODS.pop("scaled", None)
    POLICY_RULES.pop("first-layer", None)
    sys.modules.pop(PLUGIN, None)


@pytest.fixture()
def cli(monkeypatch, capsys):
    return lambda *args: run_cli(monkeypatch, capsys, *args)


def test_ls_lists_the_registered_method_and_policy(plugin, cli):
    code, text = cli("ls", "methods")
    assert code == 0 and "halfway" in text and "half the linear step toward the base" in text, text
    code, text = cli("ls", "policies")
    assert code == 0 and "first-layer" in text and "layer 0 only, at --t" in text, text


def test_merge_method_merges_a_pico_pair_with_the_registered_method(plugin, tiny_pair, tmp_path, cli, monkeypatch):
    base, adapted = tiny_pair
    monkeypatch.setenv("COLUMNS", "400")
    code, text = cli("merge", "--help")
    assert code == 0 and "task_arithmetic|ties|regmean|fisher|halfway" in text.replace(" ", ""), text
    code, text = cli("merge", base, adapted, "--t", "0.5", "--method", "halfway", "-o", tmp_path / "m")
    assert code == 0, text
    merged, a, b = (load_file(p / "model.safetensors") for p in (tmp_path / "m", adapted, base))
    for name in ("model.layers.3.self_attn.q_proj.weight", "model.embed_tokens.weight"):
        want = (0.75 * a[name].double() + 0.25 * b[name].double()).to(a[name].dtype)
        assert torch.allclose(merged[name], want, atol=1e-6), name
    assert not torch.equal(merged[name], a[name])
    code, text = cli("merge", base, adapted, "--t", "0.5", "--method", "halfwy", "-o", tmp_path / "typo")
    assert code == 2 and "'halfwy' is not a registered merge method" in text and "halfway" in text, text
    assert not (tmp_path / "typo").exists()


def test_plan_yaml_validates_registered_methods_only(plugin, tiny_pair, tmp_path, cli):
    _, adapted = tiny_pair
    good = tmp_path / "good.yaml"
    good.write_text("num_layers: 6\nmethod: slerp\nunit_methods: {layer.2: halfway}\nlayers:\n  - {layer: 2, t: 0.5}\n")
    plan = Plan.load(good)
    assert plan.methods() == {"slerp", "halfway"} and not plan.needs_statistics()
    code, text = cli("plan", "validate", good, adapted)
    assert code == 0 and "plan OK" in text, text
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_layers: 6\nmethod: halfwy\n")
    code, text = cli("plan", "validate", bad, adapted)
    assert code == 2 and "line 2" in text and "unknown merge method 'halfwy'" in text, text
    assert "slerp, lerp, task_arithmetic, ties, regmean, fisher, halfway, scaled" in text


def test_a_new_method_option_is_declared_on_the_class_only(plugin, tiny_pair, tmp_path, cli):
    """`gain` is no Plan field: the plan sets it under `method_options`, checked against the class's options."""
    base, adapted = tiny_pair
    path = tmp_path / "scaled.yaml"
    path.write_text("num_layers: 6\nmethod: scaled\nmethod_options: {gain: 0.5}\ndefault_t: 0.8\n")
    plan = Plan.load(path)
    assert Plan.from_yaml(plan.to_yaml()).method_options == {"gain": 0.5}
    assert plan_effect_hash(plan, {}) != plan_effect_hash(plan.model_copy(update={"method_options": {}}), {})
    code, text = cli("merge", base, adapted, "--plan", path, "-o", tmp_path / "m")
    assert code == 0, text
    merged, a, b = (load_file(p / "model.safetensors") for p in (tmp_path / "m", adapted, base))
    name = "model.layers.3.mlp.up_proj.weight"  # t = 0.8, gain 0.5: 0.6·adapted + 0.4·base
    assert torch.allclose(merged[name], (0.6 * a[name].double() + 0.4 * b[name].double()).float(), atol=1e-6)
    typo = tmp_path / "typo.yaml"
    typo.write_text("num_layers: 6\nmethod: scaled\nmethod_options: {gian: 0.5}\n")
    code, text = cli("plan", "validate", typo, adapted)
    assert code == 2 and "gian is not an option of scaled (their options: gain" in text, text
    code, text = cli("plan", "validate", path, adapted)
    assert code == 0 and "plan OK" in text, text
    wrong = tmp_path / "wrong.yaml"  # a value of another kind than the constructor's default: refused, not a traceback
    wrong.write_text("num_layers: 6\nmethod: scaled\nmethod_options: {gain: abc}\n")
    code, text = cli("plan", "validate", wrong, adapted)
    assert code == 2 and "method_options.gain: 'abc' is not a float like the default of scaled" in text, text


def test_mergekit_export_refuses_the_registered_method_by_name(plugin, tiny_pair):
    plan = Plan.uniform(0.5, 6, method="halfway")
    with pytest.raises(SpearError, match=r"supports slerp and lerp plans, not 'halfway'.*nothing was written"):
        mergekit_yaml(plan, *tiny_pair)
    per_unit = Plan.uniform(0.5, 6, unit_methods={"embed": "halfway"})  # a unit's method is checked too
    with pytest.raises(SpearError, match="not 'halfway'"):
        mergekit_yaml(per_unit, *tiny_pair)


def test_plan_command_uses_the_registered_policy_and_method(plugin, tiny_pair, tmp_path, cli):
    from spear_mm.scoring.layers import analyze

    scores = tmp_path / "scores"
    analyze(*tiny_pair, scores, workers=1)
    out = tmp_path / "plan.yaml"
    code, text = cli("plan", scores, "-o", out, "--policy", "first-layer", "--t", "0.4", "--method", "halfway")
    assert code == 0, text
    plan = Plan.load(out)
    assert plan.method == "halfway" and plan.provenance.policy == "first-layer"
    assert plan.layer_ts() == [0.4, 0, 0, 0, 0, 0] and plan.embed == plan.head == 0.0
    code, text = cli("plan", scores, "-o", tmp_path / "p2.yaml", "--policy", "first-layer", "--k", "2", "--t", "1")
    assert code == 2 and "does not use --k" in text, text  # the options a rule reads are declared with it
    code, text = cli(
        "plan", scores, "-o", tmp_path / "p3.yaml", "--method", "halfway", "--export-mergekit", tmp_path / "mk.yaml"
    )
    assert code == 2 and "not 'halfway'" in text and not (tmp_path / "p3.yaml").exists(), text


def test_a_name_is_registered_once():
    class Other(MergeMethod):
        name = "slerp"

    with pytest.raises(SpearError, match="registered twice"):
        register(Other)
    assert METHODS["slerp"].__name__ == "Slerp"

    def other(policy, ask):
        return {}, {}

    with pytest.raises(SpearError, match="registered twice"):
        register_policy("uniform", "again", {"t"})(other)
    assert POLICY_RULES["uniform"].rule is not other


def test_refinements_are_registered_and_validated():
    assert list(REFINEMENTS) == ["tiers", "kinds", "units"]
    assert PlannerConfig(refine="kinds").refine == "kinds"
    with pytest.raises(ValueError, match="unknown refinement 'tier'.*tiers, kinds, units"):
        PlannerConfig(refine="tier")


def test_every_builtin_declares_itself():
    for name, cls in METHODS.items():
        assert cls.name == name and cls.summary, name
        assert set(cls.options) <= set(Plan.model_fields), name  # options are plan fields
    assert [n for n, m in METHODS.items() if m.mergekit] == ["slerp", "lerp"]
    assert [n for n, m in METHODS.items() if m.needs_statistics] == ["regmean", "fisher"]

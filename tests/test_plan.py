"""The Plan type: per-tensor t resolution, constructors, YAML round trip and validation errors with lines."""

from __future__ import annotations

import pytest

from spear_mm.errors import SpearError
from spear_mm.io.architecture import ParamInfo
from spear_mm.planning.plan import LayerRule, Plan, Provenance


def _p(group: str, layer: int | None = None, module: str = "other") -> ParamInfo:
    return ParamInfo("x", group, layer, module)  # type: ignore[arg-type]


def _plan() -> Plan:
    return Plan(
        num_layers=4,
        default_t=0.1,
        layers=[
            LayerRule(layer=1, t=0.7, score=2.5, rank=1),
            LayerRule(layer=3, t=1.0, rank=2),
            LayerRule(layer=2, t=0.0, modules={"attn.q": 0.9}),
        ],
        embed=0.2,
        head=0.3,
        final_norm=0.4,
        provenance=Provenance(policy="balanced", params={"fraction": 0.25, "t": 0.7}, scores_hash="abc"),
    )


def test_t_for_resolves_layers_modules_and_non_layer_tensors():
    plan = _plan()
    assert plan.t_for(_p("layer", 1, "mlp.up")) == 0.7
    assert plan.t_for(_p("layer", 0, "attn.v")) == 0.1  # unlisted layer: default_t
    assert plan.t_for(_p("layer", 2, "attn.q")) == 0.9  # module override
    assert plan.t_for(_p("layer", 2, "attn.k")) == 0.0
    assert plan.t_for(_p("embed", module="embed")) == 0.2
    assert plan.t_for(_p("head", module="head")) == 0.3
    assert plan.t_for(_p("final_norm", module="norm")) == 0.4
    assert plan.t_for(_p("other")) == 0.0
    assert plan.layer_ts() == [0.1, 0.7, 0.0, 1.0]
    assert plan.restored_layers() == [0, 1, 2, 3] and plan.frozen_layers() == [3]
    assert [r.action for r in plan.layers] == ["restore", "base", "restore"]


def test_layer_norm_rules():
    follow = Plan.uniform(0.5, 2)
    assert follow.t_for(_p("layer", 0, "norm")) == 0.5
    assert follow.model_copy(update={"layer_norms": "keep"}).t_for(_p("layer", 0, "norm")) == 0.0
    assert follow.model_copy(update={"layer_norms": "base"}).t_for(_p("layer", 0, "norm")) == 1.0


def test_constructors():
    u = Plan.uniform(0.5, 3)
    assert u.layer_ts() == [0.5] * 3 and u.embed == u.head == 0.0 and u.provenance.policy == "uniform"
    every = Plan.uniform(0.5, 3, include_non_layers=True)
    assert every.embed == every.head == every.final_norm == every.other == 0.5
    lst = Plan.from_layer_list([0.0, 0.5, 1.0])
    assert lst.num_layers == 3 and lst.layer_ts() == [0.0, 0.5, 1.0] and lst.frozen_layers() == [2]
    assert "1/3" not in lst.summary() and "2/3 layers restored" in lst.summary()


def test_yaml_round_trip(tmp_path):
    plan = _plan()
    text = plan.to_yaml()
    assert text.startswith("# spear-mm restoration plan. t = weight of the BASE model")
    assert Plan.from_yaml(text) == plan
    path = plan.save(tmp_path / "sub" / "plan.yaml")
    assert Plan.load(path) == plan
    assert not list(tmp_path.glob("sub/*.tmp"))


def test_unknown_key_is_an_error_with_line_and_field():
    text = "num_layers: 4\ndefault_t: 0.5\nlayers:\n  - layer: 1\n    t: 0.5\n    tt: 0.9\n"
    with pytest.raises(SpearError) as exc:
        Plan.from_yaml(text, source="plan.yaml")
    msg = str(exc.value)
    assert "plan.yaml" in msg and "line 6" in msg and "layers.0.tt" in msg and "Extra inputs" in msg
    with pytest.raises(SpearError, match=r"line 2, field 'deafult_t'"):
        Plan.from_yaml("num_layers: 4\ndeafult_t: 0.5\n")


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("num_layers: 4\ndefault_t: 1.5\n", 2, "default_t"),
        ("num_layers: 4\nembed: -0.1\n", 2, "embed"),
        ("num_layers: 4\nlayers:\n  - layer: 0\n    t: 0.2\n  - layer: 1\n    t: 2\n", 6, "layers.1.t"),
        ("num_layers: 4\nlayers:\n  - layer: 2\n    modules: {attn.q: 1.01}\n", 4, "layers.0.modules.attn.q"),
    ],
)
def test_t_outside_unit_interval_is_an_error_with_line_and_field(text, line, field):
    with pytest.raises(SpearError) as exc:
        Plan.from_yaml(text, source="p.yaml")
    msg = str(exc.value)
    assert f"line {line}" in msg and f"field '{field}'" in msg and "[0, 1]" in msg


def test_other_invalid_plans():
    with pytest.raises(SpearError, match="out of range"):
        Plan.from_yaml("num_layers: 2\nlayers:\n  - layer: 5\n    t: 0.5\n")
    with pytest.raises(SpearError, match="listed twice"):
        Plan.from_yaml("num_layers: 2\nlayers:\n  - {layer: 1, t: 0.5}\n  - {layer: 1, t: 0.6}\n")
    with pytest.raises(SpearError, match="not valid YAML"):
        Plan.from_yaml("num_layers: [4\n")
    with pytest.raises(SpearError, match="mapping"):
        Plan.from_yaml("- 1\n- 2\n")
    with pytest.raises(SpearError, match="num_layers"):
        Plan.from_yaml("default_t: 0.5\n")
    with pytest.raises(SpearError, match="not found"):
        Plan.load("/nonexistent/plan.yaml")

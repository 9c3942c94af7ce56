"""`spear-mm run`'s options are RunConfig's fields and `plan`'s planner flags PlannerOptions' (issue 19 item 1): every
field has its flag with the field's default, each flag sets its field and nothing else, a misspelt planner option
fails in under 2 s naming it, and the planner's `target_retention` is `probe_recovery`."""

from __future__ import annotations

from enum import Enum

import pytest
import typer
from common import run_cli
from typer.testing import CliRunner

from spear_mm.cli import app
from spear_mm.cli.config_options import Flag, default_text, model_flags, typed
from spear_mm.cli.planner import PLANNER_FLAGS, planner_options
from spear_mm.cli.run import RUN_FLAGS, resolve
from spear_mm.errors import SpearError
from spear_mm.measured.objective import PlannerOptions
from spear_mm.pipeline.config import RunConfig
from spear_mm.scoring.table import ScoreConfig

COMMANDS = typer.main.get_command(app).commands  # type: ignore[attr-defined]
_SKIPPED = {("scoring", "device")}  # set from run's own --device


def _leaves(model, path=()) -> list[tuple[tuple[str, ...], object]]:
    """Every leaf field of `model` (sub-models' fields flattened) with its default."""
    out = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, (PlannerOptions, ScoreConfig)):
            out += _leaves(field.annotation, (*path, name))
        elif (*path, name) not in _SKIPPED:
            out.append(((*path, name), field.default_factory() if field.default_factory else field.default))
    return out


def _click_params(command: str) -> dict[str, object]:
    return {p.name: p for p in COMMANDS[command].params}


@pytest.mark.parametrize("path,default", _leaves(RunConfig), ids=[".".join(p) for p, _ in _leaves(RunConfig)])
def test_every_run_config_field_has_its_flag_with_the_same_default(path, default):
    params = _click_params("run")
    param = params["_".join(path)]
    if path in (("base",), ("adapted",)):
        assert param.param_type_name == "argument"
        return
    assert not param.hidden and param.opts[0].startswith("--")
    shown = param.default.value if isinstance(param.default, Enum) else param.default
    expected = default if isinstance(default, bool) or default is None else default_text(default)
    if isinstance(shown, (int, float)) and not isinstance(shown, bool):
        expected = type(shown)(expected)
    assert shown == expected, f"{param.opts}: {shown!r} != field default {default!r}"


@pytest.mark.parametrize("path,default", _leaves(PlannerOptions), ids=[p for (p,), _ in _leaves(PlannerOptions)])
def test_plan_and_run_spell_every_planner_flag_alike_with_the_same_default(path, default):
    (name,) = path
    run_param, plan_param = _click_params("run")[f"planner_{name}"], _click_params("plan")[name]
    assert run_param.opts == plan_param.opts == [f"--planner-{name.replace('_', '-')}"]
    assert run_param.default == plan_param.default


def _non_default(flag: Flag) -> list[str]:
    """Arguments that give `flag` a valid value other than its field's default."""
    special = {
        "suites": "demo",
        "sweep": "default",
        "policies": "measured,balanced",
        "uniform_grid": "0.3,0.7",
        "operators": "regmean=0.5",
        "general_tasks": "arc_easy",
        "domain_tasks": "x_domain",
        "planner_uniform_seeds": "0.5",
        "planner_refine": "kinds",  # a registered refinement (str, checked against the registry)
        "device": "cuda",
        "lm_eval_include": "tasks/",
    }
    name = flag.names[0]
    if flag.kind is bool:
        return [name.split("/")[1] if flag.default else name.split("/")[0]]
    if isinstance(flag.kind, type) and issubclass(flag.kind, Enum):
        default = flag.default.value if isinstance(flag.default, Enum) else flag.default
        return [name, next(m.value for m in flag.kind if m.value != default)]
    if flag.param in special:
        return [name, special[flag.param]]
    if flag.kind is int:
        return [name, str((flag.default or 2) + 1)]
    if flag.kind is float:
        return [name, str(flag.default / 2 if flag.default else 0.5)]
    return [name, f"some-{flag.param}"]


_BASE = ["b/", "a/", "--policies", "measured", "--domain-probe", "d.txt"]  # planner flags need the measured policy
_NEEDS = {"ray_address": ["--executor", "ray"], "lm_eval_include": ["--domain-tasks", "x_domain"]}


def _resolve(args: list[str]) -> RunConfig:
    ctx = COMMANDS["run"].make_context("run", list(args))
    values = dict(ctx.params)
    return resolve(values.pop("config"), typed(ctx, values))


@pytest.mark.parametrize("flag", [f for f in RUN_FLAGS if not f.argument], ids=lambda f: f.names[0].split("/")[0])
def test_each_run_flag_sets_its_field_and_nothing_else(flag):
    base = _BASE + _NEEDS.get(flag.param, [])
    before = _resolve(base).model_dump()
    after = _resolve(base + _non_default(flag)).model_dump()
    changed = {k for k in before if before[k] != after[k]}
    implied = {"general_tasks": {"backend", "suites"}, "domain_tasks": {"backend", "suites"}}.get(flag.param, set())
    if flag.path[0] == "policies":
        implied = set()
    assert changed - implied == {flag.path[0]}, f"{flag.names}: changed {changed}"
    if len(flag.path) == 2:  # only that option of the section
        inner = {k for k in before[flag.path[0]] if before[flag.path[0]][k] != after[flag.path[0]][k]}
        assert inner == {flag.path[1]}


def test_no_flag_leaves_the_config_files_values_and_the_defaults(tmp_path):
    assert _resolve(["b/", "a/"]) == RunConfig(base="b/", adapted="a/")
    config = tmp_path / "run.yaml"
    config.write_text(
        "base: b\nadapted: a\nseed: 7\nbaselines: false\nplanner: {budget: 5, probe_tokens: 256}\n"
        "policies: [measured]\ndomain_probe: d.txt\n"
    )
    ctx = COMMANDS["run"].make_context("run", ["-c", str(config), "--planner-budget", "3"])
    values = dict(ctx.params)
    got = resolve(values.pop("config"), typed(ctx, values))
    assert (got.seed, got.baselines, got.planner.budget, got.planner.probe_tokens) == (7, False, 3, 256)


def test_old_planner_spellings_are_hidden_aliases_and_two_spellings_at_once_are_refused():
    assert _resolve([*_BASE, "--probe-tokens", "256", "--granularity", "sublayer"]).planner.probe_tokens == 256
    with pytest.raises(SpearError, match="--planner-probe-tokens and --probe-tokens are the same option"):
        _resolve([*_BASE, "--planner-probe-tokens", "128", "--probe-tokens", "256"])
    hidden = {p.opts[0] for p in COMMANDS["plan"].params if p.hidden}
    assert {"--budget", "--max-domain-loss", "--probe-tokens", "--probe-units", "--granularity"} <= hidden
    assert "--target-retention" in hidden


def test_plan_target_retention_is_the_deprecated_probe_recovery(capsys):
    ctx = COMMANDS["plan"].make_context("plan", ["scores/", "-o", "p.yaml", "--target-retention", "0.8"])
    options = planner_options(typed(ctx, ctx.params))
    assert options.probe_recovery == 0.8 and options.probe_tokens == PlannerOptions().probe_tokens == 1024
    assert "now --planner-probe-recovery" in capsys.readouterr().err.replace("\n", " ")


@pytest.mark.parametrize("spelling", ["--planner-budget", "--budget"])
def test_a_bad_planner_value_on_plan_names_the_flag_as_typed(spelling):
    ctx = COMMANDS["plan"].make_context("plan", ["scores/", "-o", "p.yaml", spelling, "-1"])
    with pytest.raises(SpearError, match=f"^{spelling} -1: Input should be greater than or equal to 0.$"):
        planner_options(typed(ctx, ctx.params))


def test_the_rename_keeps_the_planner_steps_resume_key():
    """RUN/planner/'s key hashes the settings under the old name: a run planned before the rename resumes."""
    dump = PlannerOptions(probe_recovery=0.8).planner_config().key_dump()
    assert dump["target_retention"] == 0.8 and "probe_recovery" not in dump


def test_the_planners_old_key_in_run_yaml_names_the_new_one(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "base: b\nadapted: a\npolicies: [measured]\ndomain_probe: d.txt\nplanner: {target_retention: 0.8}\n"
    )
    with pytest.raises(SpearError, match="planner: target_retention: .*now probe_recovery"):
        RunConfig.build(config)
    config.write_text(config.read_text().replace("0.8", "null"))  # as RUN/run.yaml files before the rename hold it
    assert RunConfig.build(config).planner == PlannerOptions()


@pytest.mark.parametrize(
    "options,message",
    [
        ({"policies": "measured"}, "the measured policy needs a domain probe: pass --domain-probe"),
        ({"operators": "regmean=0.5"}, "operators need a domain probe"),
        ({"ray_address": "auto"}, "--ray-address needs --executor ray"),
        ({"lm_eval_include": "tasks/"}, "--lm-eval-include needs --tasks"),
        ({"general_tasks": "a,b", "domain_tasks": "b"}, r"\['b'\] are given as both general and domain"),
        ({"planner": {"budget": 3}}, "used only by the measured policy"),
        ({"sweep": "f=0.1;t=2"}, r"sweep: --sweep t: values must lie in \(0, 1\]"),
    ],
)
def test_cross_field_mistakes_are_refused_when_the_config_is_built(options, message):
    with pytest.raises(SpearError, match=message):
        RunConfig.build(base="b", adapted="a", **options)


def test_task_names_imply_the_lm_eval_back_end():
    assert RunConfig.build(base="b", adapted="a", general_tasks="arc_easy").backend == "lm-eval"
    assert RunConfig.build(base="b", adapted="a", tasks="arc_easy").backend == "lm-eval"
    got = _resolve(["b/", "a/", "--tasks", "arc_easy", "--general-tasks", "piqa"])
    assert (got.backend, got.suites, got.general_tasks) == ("lm-eval", "", ["arc_easy", "piqa"])


@pytest.mark.parametrize(
    "how,expected",
    [
        ("yaml", ["planner.budjet", "Extra inputs", "Fields of planner", "budget"]),
        ("flag", ["No such option: --planner-budjet", "--planner-budget"]),
    ],
)
def test_a_misspelt_planner_option_fails_before_any_work_naming_it(
    tiny_pair, tmp_path, monkeypatch, capsys, how, expected
):
    probe = tmp_path / "domain.txt"
    probe.write_text("Net income rose. " * 50)
    args = ["run", *tiny_pair, "-o", tmp_path / "run", "--policies", "measured", "--domain-probe", probe]
    if how == "yaml":
        (tmp_path / "run.yaml").write_text("planner: {budjet: 3}\n")
        args += ["-c", tmp_path / "run.yaml"]
    else:
        args += ["--planner-budjet", "3"]
    code, text = run_cli(monkeypatch, capsys, *args)  # before torch loads: tests/test_cli_startup.py
    assert code == 2 and all(e in text for e in expected), text
    assert "Traceback" not in text and not (tmp_path / "run").exists()


def test_run_help_groups_the_options_and_shows_two_examples():
    result = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    panels = [line.split("─ ")[1].split(" ─")[0] for line in result.output.splitlines() if line.startswith("╭─ ")]
    assert panels == [
        "Arguments",
        "Options",
        "Inputs",
        "Candidates",
        "Measured planner",
        "Data-aware operators",
        "Choice",
        "Evaluation",
        "Scoring",
        "Execution",
        "Output",
    ], panels
    text = " ".join(result.output.split())
    assert text.count("spear-mm run ") >= 2 and "--planner-budget 8" in text
    assert "--probe-tokens" not in text.replace("--planner-probe-tokens", "")  # the old spelling is hidden


def test_the_generated_flags_cover_every_field():
    """A field added to RunConfig (or PlannerOptions) gets its flag with no other edit."""
    run_params = {f.path for f in RUN_FLAGS}
    assert run_params == {p for p, _ in _leaves(RunConfig)}
    assert {f.path for f in PLANNER_FLAGS if not f.hidden} == {(n,) for n in PlannerOptions.model_fields}
    assert model_flags(PlannerOptions, prefix="planner")[0].names == ("--planner-t-mid",)

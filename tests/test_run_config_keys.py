"""run.yaml keys and `spear-mm run` flags agree: each flag's own spelling is accepted as a key (`suite:` for
--suite, `tasks:` for --tasks, `planner_budget:` for --planner-budget), old keys keep working, flags win, and both
spellings at once are one clear error."""

from __future__ import annotations

import pytest
import yaml

from spear_mm.errors import SpearError
from spear_mm.pipeline.config import RunConfig


def _write(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_the_flag_spellings_are_keys_and_the_resolved_copy_keeps_the_keys(tmp_path):
    measured = {"base": "b", "adapted": "a", "policies": "measured", "domain_probe": "d.txt"}  # planner options need it
    flags = _write(tmp_path / "flags.yaml", {**measured, "suite": "demo", "tasks": "arc_easy", "planner_budget": 8})
    keys = _write(tmp_path / "keys.yaml", {**measured, "suites": "demo", "general_tasks": ["arc_easy"],
                                           "planner": {"budget": 8}})  # fmt: skip
    a, b = RunConfig.build(flags), RunConfig.build(keys)
    assert a == b and a.suites == "demo" and a.general_tasks == ["arc_easy"] and a.planner.budget == 8
    resolved = yaml.safe_load(a.to_yaml())
    assert "suites" in resolved and "suite" not in resolved and resolved["planner"]["budget"] == 8


def test_flags_win_over_either_spelling(tmp_path):
    path = _write(tmp_path / "run.yaml", {"base": "b", "adapted": "a", "suite": "demo", "planner_budget": 8,
                                          "planner": {"probe_tokens": 256}, "policies": "measured",
                                          "domain_probe": "d.txt"})  # fmt: skip
    config = RunConfig.build(path, suites="general", planner={"budget": 3})  # what the CLI passes for the flags
    assert config.suites == "general" and (config.planner.budget, config.planner.probe_tokens) == (3, 256)


@pytest.mark.parametrize(
    "extra",
    [{"suite": "demo", "suites": "general"}, {"tasks": "x", "general_tasks": ["y"]},
     {"planner_budget": 8, "planner": {"budget": 3}}],
)  # fmt: skip
def test_both_spellings_at_once_are_refused(tmp_path, extra):
    path = _write(tmp_path / "run.yaml", {"base": "b", "adapted": "a", **extra})
    with pytest.raises(SpearError, match="same option.*give one") as exc:
        RunConfig.build(path)
    assert str(path) in str(exc.value)

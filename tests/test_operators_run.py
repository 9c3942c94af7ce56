"""`spear-mm run --operators`: the data-aware operators as curves in a run (issue 18, item 3) on the pico pair."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from spear_mm import run
from spear_mm.errors import SpearError
from spear_mm.training.cpt import CptConfig, cpt

pytestmark = pytest.mark.slow  # every test here uses a CPT of the pico base (the `pair` fixture)

GENERAL = "The quick brown fox jumps over the lazy dog. Water boils at 100 degrees Celsius. "
FINANCE = "Revenue rose 12 percent to 4.2 billion dollars. The central bank held its policy rate. "


@pytest.fixture(scope="module")
def pair(tiny_pair, tmp_path_factory) -> tuple[Path, Path]:
    """The pico base, and a real (tiny) CPT of it on finance text, so that K is defined."""
    root = tmp_path_factory.mktemp("oppair")
    (root / "finance.txt").write_text((FINANCE + "Net income and loan loss provisions were discussed. ") * 16)
    fast = dict(lr=3e-3, seq_len=32, batch_size=4, logging_steps=10, progress=False, threads=1)
    cpt(tiny_pair[0], [root / "finance.txt"], root / "adapted", CptConfig(max_steps=20, **fast))
    return tiny_pair[0], root / "adapted"


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("opsuite")
    (root / "general.txt").write_text(GENERAL * 6)
    (root / "finance.txt").write_text(FINANCE * 6)
    (root / "g_probe.txt").write_text(GENERAL.upper() * 10)
    (root / "d_probe.txt").write_text((FINANCE + "Credit spreads narrowed. ") * 10)
    tasks = [
        {"name": "gen_ppl", "kind": "perplexity", "loader": "text", "path": "general.txt", "chunk_chars": 0},
        {"name": "fin_ppl", "kind": "perplexity", "loader": "text", "group": "domain", "path": "finance.txt",
         "chunk_chars": 0},
    ]  # fmt: skip
    (root / "suite.yaml").write_text(yaml.safe_dump({"name": "tiny", "tasks": tasks}))
    return root


def _run(pair, suite: Path, out: Path, **kw):
    options = dict(suites=str(suite / "suite.yaml"), data_dir=str(suite), policies=["balanced"], uniform_grid=[0.3, 0.7],
                   operators={"regmean": [0.3, 0.7]}, domain_probe=str(suite / "d_probe.txt"),
                   general_probe=str(suite / "g_probe.txt"), stats_tokens=256)  # fmt: skip
    return run(*pair, out, **(options | kw))


def test_operator_curves_are_candidates_judged_against_the_uniform_curve(pair, suite, tmp_path):
    summary = _run(pair, suite, tmp_path / "run")
    ops = {n: e for n, e in summary.candidates.items() if e.kind == "operator"}
    assert set(ops) == {"regmean-a0.3", "regmean-a0.7"}
    assert all(e.method == "regmean" and e.retention is not None and e.gain_kept is not None for e in ops.values())
    compared = {c.plan: c for c in summary.curve_comparisons}
    assert {"regmean-a0.3", "regmean-a0.7", "balanced"} <= set(compared)
    assert all(compared[n].nearest and compared[n].tests for n in ops)  # paired test against the nearest uniform
    stage = next(s for s in summary.stages if s.name == "probe statistics")
    assert stage.status == "ran" and "regmean" in stage.detail
    plan = yaml.safe_load((tmp_path / "run" / "plans" / "regmean-a0.3.yaml").read_text())
    assert plan["method"] == "regmean" and Path(plan["statistics"]) == tmp_path / "run" / "stats"
    # operators differ from the uniform point of the same t (RegMean moves linear layers along the probes' inputs)
    r = {n: e.retention for n, e in summary.candidates.items()}
    assert r["regmean-a0.3"] != r["uniform-t0.3"]
    # a re-run reuses the statistics and every evaluation
    again = _run(pair, suite, tmp_path / "run")
    assert next(s for s in again.stages if s.name == "probe statistics").status == "skipped"
    log = [json.loads(x) for x in (tmp_path / "run" / "run_log.jsonl").read_text().splitlines()]
    assert [e["status"] for e in log if e["step"] == "evaluate regmean-a0.3"] == ["ran", "skipped"]


def test_operators_need_a_domain_probe(pair, suite, tmp_path):
    with pytest.raises(SpearError, match="domain-probe"):
        run(*pair, tmp_path / "r", suites=str(suite / "suite.yaml"), data_dir=str(suite),
            operators="regmean=0.5")  # fmt: skip
    assert not (tmp_path / "r").exists()
    with pytest.raises(SpearError, match="strictly between 0 and 1"):
        run(*pair, tmp_path / "r", operators="regmean=0.5,1", domain_probe=str(suite / "d_probe.txt"))


def test_measured_planner_searches_the_operator_as_well_as_slerp(pair, suite, tmp_path):
    summary = _run(pair, suite, tmp_path / "run", policies=["measured"], baselines=False,
                   planner={"budget": 2, "probe_units": 2, "probe_tokens": 256})  # fmt: skip
    plan = yaml.safe_load((tmp_path / "run" / "plans" / "measured.yaml").read_text())
    params = plan["provenance"]["params"]
    values = {m: params[f"probe_value_{m}"] for m in ("slerp", "regmean")}
    assert params["method"] == plan["method"] == max(values, key=lambda m: (values[m], m == "slerp"))
    assert (plan.get("statistics") is not None) == (plan["method"] == "regmean")
    assert summary.candidates["measured"].retention is not None

"""Weight-only scoring on the tiny pair (layers 3 and 5 drift strongly), I/O round trips and bad input."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from spear_mm.errors import SpearError
from spear_mm.io.architecture import ParamInfo
from spear_mm.scoring.layers import ScoreConfig, analyze, layer_scores, normalize_rows, score_names, score_tensor_pair
from spear_mm.scoring.table import ScoreTable, read_scores_csv


@pytest.fixture(scope="module")
def scored(tiny_pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("scores")
    return analyze(*tiny_pair, out, workers=2), out


def test_strongly_drifted_layers_rank_first(scored):
    table, _ = scored
    assert set(table.ranking()[:2]) == {3, 5}
    assert sorted(s.rank for s in table.layers) == list(range(1, 7))
    top = [s for s in table.layers if s.layer in (3, 5)]
    assert all(s.rel_change > 0.3 for s in top)
    assert table.base_fingerprint and table.adapted_fingerprint


def test_rows_cover_every_tensor_and_non_layers_get_the_metrics_that_apply(scored, tiny_pair):
    table, _ = scored
    from spear_mm.io.checkpoint import Checkpoint

    assert {m.name for m in table.modules} == set(Checkpoint.open(tiny_pair[1]).names)
    for m in table.non_layer():  # scored as units (spear_mm.scoring.units), not within a module type
        assert m.score is None and m.rel_change > 0 and -1 <= m.cos <= 1
        two_d = len(m.shape) == 2
        assert (m.swc is not None) == two_d and (m.row_drift_median is not None) == two_d
        if two_d:  # perturb_ adds 1% noise everywhere: every row moved by about 1%
            assert 0.005 < m.row_drift_median < 0.02 and m.row_drift_median <= m.row_drift_p99 <= m.row_drift_max
    units = {u.unit: u for u in table.units}
    assert list(units) == [f"layer.{i}" for i in range(6)] + ["embed", "head", "final_norm"]
    assert sorted(u.rank for u in units.values()) == list(range(1, 10))
    assert {units["layer.3"].rank, units["layer.5"].rank} == {1, 2}  # the drifted layers lead the joint ranking
    norms = [m for m in table.modules if m.module == "norm"]
    assert norms and all(m.score is None for m in norms)
    matrices = [m for m in table.modules if m.score is not None]
    assert len(matrices) == 6 * 7
    for m in matrices:
        for v in (m.snr_base, m.snr_adapted, m.snr_delta, m.swc, m.drop, m.erank_base, m.score):
            assert math.isfinite(v)


def test_json_and_csv_round_trip(scored):
    table, out = scored
    loaded = ScoreTable.load(out)
    assert loaded == table
    assert loaded.content_hash() == table.content_hash()
    rows = read_scores_csv(out / "scores.csv")
    assert list(rows[0])[:4] == ["layer", "module", "name", "score"]
    assert {"rel_change", "cos", "snr_base", "snr_adapted", "snr_delta", "swc", "drop", "d_signal", "d_erank"} <= set(
        rows[0]
    )
    by_name = {r["name"]: r for r in rows}
    for m in table.modules:
        r = by_name[m.name]
        assert (r["score"] == "") == (m.score is None)
        if m.score is not None:
            assert float(r["score"]) == pytest.approx(m.score)
    assert (out / "layer_scores.csv").read_text().startswith("layer,score,rank")
    for fig in ("heatmap.png", "layer_scores.png"):
        assert (out / fig).stat().st_size > 10_000
    assert json.loads((out / "scores.json").read_text())["config"]["alpha"] == 0.5


def test_unit_of_work_matches_the_pool(scored, tiny_pair):
    table, _ = scored
    names = ["model.layers.5.mlp.up_proj.weight", "model.layers.0.input_layernorm.weight"]
    rows = score_names(*tiny_pair, names, ScoreConfig())
    by_name = {m.name: m for m in table.modules}
    for r in rows:
        assert r.rel_change == by_name[r.name].rel_change
        assert r.snr_base == by_name[r.name].snr_base
    import pickle

    assert pickle.loads(pickle.dumps((score_names, ScoreConfig(alpha=0.3))))[1].alpha == 0.3


def test_normalisation_options_and_max_aggregate(scored):
    table, _ = scored
    raw = [m.model_copy(update=dict(swc_n=None, drop_n=None, score=None)) for m in table.modules]
    for cfg in (
        ScoreConfig(normalize="rank"),
        ScoreConfig(aggregate="max"),
        ScoreConfig(alpha=0.0),
    ):  # (SWC alone: the random-init base has no signal)
        rows = normalize_rows(raw, cfg)
        layers = layer_scores(rows, 6, cfg)
        assert {s.layer for s in layers if s.rank <= 2} == {3, 5}, cfg
    ranked = normalize_rows(raw, ScoreConfig(normalize="rank"))
    assert all(0.0 <= m.swc_n <= 1.0 for m in ranked if m.swc_n is not None)


def _param(name="model.layers.0.mlp.up_proj.weight") -> ParamInfo:
    return ParamInfo(name, "layer", 0, "mlp.up")


@pytest.mark.parametrize(
    "base,adapted",
    [
        (torch.zeros(8, 4), torch.zeros(8, 4)),
        (torch.zeros(8, 4), torch.ones(8, 4)),
        (torch.full((8, 4), 2.0), torch.full((8, 4), 2.5)),
        (torch.randn(1, 16), torch.randn(1, 16)),
        (torch.randn(2, 2), torch.randn(2, 2)),
        (torch.randn(3, 3).bfloat16(), torch.randn(3, 3).bfloat16()),
    ],
    ids=["zeros", "zero-base", "constant", "1xN", "2x2", "bf16-tiny"],
)
def test_degenerate_matrices_score_finite(base, adapted):
    row = score_tensor_pair(base, adapted, _param())
    for key, value in row.model_dump().items():
        if isinstance(value, float):
            assert math.isfinite(value), key
    assert row.swc is not None


def test_nan_in_weights_names_the_tensor():
    bad = torch.randn(4, 4)
    bad[1, 2] = float("nan")
    with pytest.raises(SpearError, match=r"model\.layers\.0\.mlp\.up_proj\.weight.*NaN"):
        score_tensor_pair(torch.randn(4, 4), bad, _param())


def test_nan_in_checkpoint_is_an_error_naming_the_tensor(tiny_pair, tmp_path):
    base, adapted = tiny_pair
    bad = tmp_path / "adapted"
    shutil.copytree(adapted, bad)
    sd = load_file(bad / "model.safetensors")
    sd["model.layers.2.self_attn.q_proj.weight"][0, 0] = float("nan")
    save_file(sd, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SpearError, match=r"model\.layers\.2\.self_attn\.q_proj\.weight"):
        analyze(base, bad, workers=1)


def test_no_recognisable_layers_is_an_error(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "weird", "num_hidden_layers": 1}))
    save_file({"encoder.blob.weight": torch.randn(4, 4)}, d / "model.safetensors")
    with pytest.raises(SpearError, match=r"No transformer layers recognised.*architectures\.json"):
        analyze(d, d, workers=1)


def test_bad_scoring_option_names_the_option_and_value(tmp_path):
    """Checked before the pair is opened (these folders do not exist): one sentence, option = value: the rule."""
    with pytest.raises(SpearError) as exc:
        analyze(tmp_path / "base", tmp_path / "adapted", alpha=5.0)
    assert str(exc.value) == "scoring option alpha = 5.0: Input should be less than or equal to 1."


def test_scores_from_another_pair_are_refused(scored):
    table, _ = scored
    with pytest.raises(SpearError, match="another pair"):
        table.check_pair("0" * 16, table.adapted_fingerprint)
    table.check_pair(table.base_fingerprint, table.adapted_fingerprint)


PROBE_TEXT = (
    "The committee met on Tuesday to discuss the new library. Children played in the park while it rained. "
    "Water boils at 100 degrees Celsius at sea level. The quick brown fox jumps over the lazy dog. "
) * 12


def test_probe_scores_and_ground_truth(tiny_pair, tmp_path):
    from spear_mm.scoring.probes import linear_cka, spearman

    probe = tmp_path / "general.txt"
    probe.write_text(PROBE_TEXT)
    table = analyze(*tiny_pair, probe=probe, ground_truth=True, workers=1, probe_tokens=600)
    p = table.probe
    assert p is not None and p.tokens > 100 and math.isfinite(p.nll_base) and math.isfinite(p.nll_adapted)
    assert all(0.0 <= s.activation_drift <= 1.0 for s in table.layers)
    assert all(math.isfinite(s.restore_gain) for s in table.layers)
    assert p.spearman_ground_truth is not None and -1.0 <= p.spearman_ground_truth <= 1.0
    x = torch.randn(50, 8)
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3 * x @ torch.linalg.qr(torch.randn(8, 8))[0]) == pytest.approx(
        1.0
    )  # rotation/scale invariant
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def test_cli_analyze_prints_the_top_table(tiny_pair, tmp_path):
    from typer.testing import CliRunner

    from spear_mm.cli import app

    out = tmp_path / "scores"
    res = CliRunner().invoke(app, ["analyze", str(tiny_pair[0]), str(tiny_pair[1]), "-o", str(out), "-j", "2"])
    assert res.exit_code == 0, res.output
    assert "Top 6 layers" in res.output and (out / "heatmap.png").exists()
    assert set(ScoreTable.load(out).ranking()[:2]) == {3, 5}
    res = CliRunner().invoke(app, ["analyze", str(tiny_pair[0]), str(tiny_pair[1]), "-o", str(out), "--ground-truth"])
    assert res.exit_code != 0 and "--probe" in str(res.exception)

"""The units outside the blocks (embeddings, head, final norm) on the layers' scale: they score like the layers
that moved like them, so a CPT embedding whose relative change is far above tightly clustered layers no longer
ranks first by construction (SmolLM2: 57-62 against <= 7.2 before); a vocabulary that moved as a whole still
ranks with the most-moved layers. They appear in the ranking figure and in the report's unit table."""

from __future__ import annotations

import shutil

from common import run_cli

from spear_mm.scoring.table import LayerScore, ModuleScore
from spear_mm.scoring.units import drift_quantile, like_layers_score, unit_scores


def _layers(changes: list[float], scores: list[float]) -> list[LayerScore]:
    return [LayerScore(layer=i, score=s, rel_change=c) for i, (c, s) in enumerate(zip(changes, scores, strict=True))]


def _embed(rc: float, row_median: float) -> ModuleScore:
    return ModuleScore(name="model.embed_tokens.weight", group="embed", layer=None, module="embed", shape=[100, 8],
                       base_norm=1.0, delta_norm=rc, rel_change=rc, cos=0.99, row_drift_median=row_median)  # fmt: skip


# 30 layers as on the Reuters pair (docs/results.md): relative change 1.2-1.4%, layer 0 1.9%; scores up to 7.2
CHANGES = [0.019] + [0.012 + 0.002 * (i % 11) / 10 for i in range(29)]
SCORES = [7.2] + [-1.0 + 6.0 * ((7 * i) % 29) / 28 for i in range(29)]


def test_a_cpt_embedding_no_longer_ranks_first_by_construction():
    """rc 5.9% (a few domain-token rows moved a lot), the vocabulary as a whole moved like a median layer."""
    units = {u.unit: u for u in unit_scores([_embed(0.059, 0.013)], _layers(CHANGES, SCORES))}
    embed = units["embed"]
    assert min(SCORES) <= embed.score <= max(SCORES) and 5 < embed.rank < 28  # mid-ranking, not 57-62 at rank 1
    assert 0.2 < embed.drift_quantile < 0.8 and embed.tied  # no separate head: the embedding is tied


def test_a_vocabulary_that_moved_as_a_whole_ranks_with_the_most_moved_layers():
    units = {u.unit: u for u in unit_scores([_embed(0.6, 0.6)], _layers(CHANGES, SCORES))}
    most_moved = sorted(range(30), key=lambda i: -CHANGES[i])[:3]  # L // 10 neighbours
    assert abs(units["embed"].score - sum(SCORES[i] for i in most_moved) / 3) < 1e-9
    assert units["embed"].drift_quantile == 1.0
    few = {u.unit: u for u in unit_scores([_embed(0.6, 0.6)], _layers([0.01, 0.02, 0.5], [3.0, 1.0, 2.0]))}
    assert few["embed"].score == 2.0 and few["embed"].rank == 3  # ties rank after the layer


def test_like_layers_score():
    changes, scores = [0.01, 0.02, 0.04, 0.08], [0.0, 1.0, 2.0, 3.0]
    assert like_layers_score(0.021, changes, scores) == 1.0  # nearest on a log scale
    assert like_layers_score(5.0, changes, scores) == 3.0 and like_layers_score(0.0, changes, scores) == 0.0
    assert like_layers_score(0.03, [0.01] * 20 + [0.03, 0.031], [0.0] * 20 + [4.0, 2.0]) == 3.0  # mean of L // 10
    assert drift_quantile(0.03, changes) == 0.5 and drift_quantile(1.0, []) == 0.5


def test_the_ranking_figure_and_the_report_show_every_unit(tiny_pair, tmp_path, monkeypatch, capsys):
    from spear_mm.scoring.plots import _bars
    from spear_mm.scoring.table import ScoreTable

    code, text = run_cli(monkeypatch, capsys, "analyze", *tiny_pair, "-o", tmp_path / "run" / "scores", "-j", "1")
    assert code == 0, text
    table = ScoreTable.load(tmp_path / "run" / "scores")
    bars = _bars(table)
    assert [b[0] for b in bars] == [str(i) for i in range(6)] + ["embed", "head", "final_norm"]
    assert sorted(b[2] for b in bars) == list(range(1, 10))
    assert (tmp_path / "run" / "scores" / "layer_scores.png").stat().st_size > 1000
    code, text = run_cli(monkeypatch, capsys, "evaluate", tiny_pair[0], "--suite", "demo", "--limit", "2",
                         "-o", tmp_path / "run" / "eval", "--base", "base")  # fmt: skip
    assert code == 0, text
    shutil.copy(tmp_path / "run" / "eval" / "base.json", tmp_path / "run" / "eval" / "merged.json")
    code, text = run_cli(monkeypatch, capsys, "report", tmp_path / "run")
    assert code == 0, text
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Units: layers, embeddings, head, final norm" in report
    for unit in ("layer.3", "embed", "head", "final_norm"):
        assert f"| {unit} |" in report, unit
    assert (tmp_path / "run" / "report_files" / "layer_scores.png").is_file()

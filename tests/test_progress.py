"""Progress without a terminal (`spear-mm run … > run.log`, CI, nohup): plain lines — step, done/total, elapsed,
ETA — one per finished unit of work or every 30 s, never a carriage-return bar. The streams pytest captures are
not terminals, so the CLI tests here see exactly what a log file gets."""

from __future__ import annotations

import io
import re

from common import FINANCE, run_cli
from rich.console import Console
from rich.progress import Progress

from spear_mm.cli.progress import PlainProgress, bars

LINE = r"{}: {}/{} \((\d+)%\), elapsed \d+:\d\d:\d\d"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _plain() -> tuple[PlainProgress, io.StringIO, Clock]:
    buf, clock = io.StringIO(), Clock()
    return PlainProgress(Console(file=buf, width=200), clock=clock), buf, clock


def test_bars_are_rich_on_a_terminal_and_plain_lines_otherwise():
    assert isinstance(bars(console=Console(file=io.StringIO())), PlainProgress)
    assert isinstance(bars(console=Console(file=io.StringIO(), force_terminal=True)), Progress)


def test_a_line_per_unit_or_every_30_s_and_one_at_the_end():
    p, buf, clock = _plain()
    models = p.add_task("evaluate models", total=4, per_unit=True)
    for i in range(1, 5):
        clock.now += 10
        p.update(models, completed=i)
    assert buf.getvalue().splitlines() == [
        "evaluate models: 1/4 (25%), elapsed 0:00:10, ETA 0:00:30",
        "evaluate models: 2/4 (50%), elapsed 0:00:20, ETA 0:00:20",
        "evaluate models: 3/4 (75%), elapsed 0:00:30, ETA 0:00:10",
        "evaluate models: 4/4 (100%), elapsed 0:00:40",
    ]
    buf.truncate(0), buf.seek(0)
    tensors = p.add_task("score tensors", total=100)
    for _ in range(100):  # 100 tensors in 50 s: one line at 30 s, one at the end
        clock.now += 0.5
        p.advance(tensors)
    assert buf.getvalue().splitlines() == [
        "score tensors: 60/100 (60%), elapsed 0:00:30, ETA 0:00:20",
        "score tensors: 100/100 (100%), elapsed 0:00:50",
    ]
    p.update(tensors, completed=100)  # a repeated final update prints nothing more
    assert len(buf.getvalue().splitlines()) == 2


def test_bytes_and_sub_steps():
    p, buf, clock = _plain()
    merge = p.add_task("write chosen model (bytes)", total=538e6, unit="bytes")
    clock.now = 31
    p.update(merge, completed=269e6)
    p.update(merge, completed=538e6)
    items = p.add_task("  base · task_a", total=8, detail=True)
    p.update(items, completed=8)  # a sub-step's end: one line
    clock.now = 70  # the next sub-step starts; 39 s since the last line: a heartbeat
    p.update(items, completed=0, description="  adapted · task_b")
    clock.now = 101
    p.update(items, completed=4)
    assert buf.getvalue().splitlines() == [
        "write chosen model (bytes): 269/538 MB (50%), elapsed 0:00:31, ETA 0:00:31",
        "write chosen model (bytes): 538/538 MB (100%), elapsed 0:00:31",
        "base · task_a: 8/8 (100%), elapsed 0:00:00",
        "adapted · task_b: 0/8 (0%), elapsed 0:00:00",
        "adapted · task_b: 4/8 (50%), elapsed 0:00:31, ETA 0:00:31",
    ]


def test_run_to_a_log_prints_progress_lines_and_the_merge_reaches_100_percent_in_bf16(
    cpt_pair, tmp_path, monkeypatch, capsys
):
    args = ["--suite", "demo", "--limit", "4", "--policies", "balanced", "--no-baselines", "--out-dtype", "bf16",
            "--choose-from", "plans"]  # fmt: skip
    code, text = run_cli(monkeypatch, capsys, "run", *cpt_pair, *args, "-o", tmp_path / "run")
    assert code == 0, text
    assert re.search(LINE.format("score tensors", r"\d+", r"\d+"), text)
    for i in (1, 2, 3):  # base, adapted, balanced: a line each
        assert re.search(LINE.format("evaluate models", i, 3), text), text
    merge = re.findall(r"write chosen model \(bytes\): [\d./]+ MB \((\d+)%\)", text)
    assert merge and merge[-1] == "100", text  # output bytes against output bytes: bf16 is not stuck at 50%
    assert "\r" not in text and "━" not in text  # no bar drawn for a log file


def test_merge_and_cpt_without_a_terminal(cpt_pair, tmp_path, monkeypatch, capsys):
    code, text = run_cli(monkeypatch, capsys, "merge", *cpt_pair, "--t", "0.5", "--out-dtype", "bf16", "-o",
                         tmp_path / "m")  # fmt: skip
    assert code == 0, text
    assert re.search(r"merge: [\d./]+ MB \(100%\), elapsed", text), text
    corpus = tmp_path / "fin.txt"
    corpus.write_text("\n\n".join(FINANCE * 4) + "\n")
    code, text = run_cli(monkeypatch, capsys, "cpt", cpt_pair[0], "--corpus", corpus, "-o", tmp_path / "c",
                         "--max-steps", "3", "--seq-len", "16", "--batch-size", "2")  # fmt: skip
    assert code == 0, text
    assert re.search(LINE.format("cpt: optimizer steps", 3, 3), text), text
    assert "\r" not in text and "it/s]" not in text  # no tqdm bar


def test_verbose_shows_spear_mm_debug_lines_only(tmp_path, monkeypatch, capsys):
    import logging

    code, text = run_cli(monkeypatch, capsys, "-v", "compare", tmp_path / "a.json", tmp_path / "b.json")
    assert code == 2 and "no such file" in text
    assert logging.getLogger("spear_mm.report.figures").isEnabledFor(logging.DEBUG)
    for noisy in ("matplotlib.font_manager", "urllib3", "filelock"):  # 370 findfont lines before
        assert not logging.getLogger(noisy).isEnabledFor(logging.DEBUG), noisy
    run_cli(monkeypatch, capsys, "compare", tmp_path / "a.json", tmp_path / "b.json")
    assert not logging.getLogger("spear_mm.report.figures").isEnabledFor(logging.DEBUG)


def test_analyze_and_evaluate_without_a_terminal(tiny_pair, tmp_path, monkeypatch, capsys):
    code, text = run_cli(monkeypatch, capsys, "analyze", *tiny_pair, "-o", tmp_path / "scores", "--workers", "1")
    assert code == 0, text
    assert re.search(r"scoring tensors: (\d+)/\1 \(100%\), elapsed", text), text  # the step's last line
    code, text = run_cli(monkeypatch, capsys, "evaluate", *tiny_pair, "--suite", "demo", "--limit", "2", "-o",
                         tmp_path / "eval")  # fmt: skip
    assert code == 0, text
    for model in ("base", "adapted"):  # one line per model and task
        assert re.search(LINE.format(f"{model} · demo_finance_ppl", 2, 2), text), text
    assert "━" not in text

"""`spear-mm compare A.json B.json`: paired tests of two evaluated models on the items they share."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from spear_mm.cli.output import out_console
from spear_mm.errors import SpearError
from spear_mm.evaluation.metrics import EvalResult
from spear_mm.evaluation.noise import ALPHA, paired_tests


def _load(path: Path) -> EvalResult:
    if not path.is_file():
        raise SpearError(f"{path}: no such file; give two result files written by `spear-mm evaluate` or `run`.")
    try:
        return EvalResult.load(path)
    except ValueError as exc:
        first = str(exc).splitlines()[0]
        raise SpearError(f"{path}: not an evaluation result ({first}); give a <model>.json from evaluate/run.") from exc


def compare_cmd(
    a: Path = typer.Argument(..., help="Result file of model A (e.g. run/eval/balanced.json)."),
    b: Path = typer.Argument(..., help="Result file of model B, evaluated on the same items (same suite, seed)."),
) -> None:
    """Which of two models is better on which task, beyond noise: the paired tests `run` uses (exact McNemar
    on accuracy, paired bootstrap of NLL/token on perplexity), on the items both were scored on."""
    ra, rb = _load(a), _load(b)
    na, nb = ra.model or a.stem, rb.model or b.stem
    if na == nb:
        na, nb = f"{na} (A)", f"{nb} (B)"
    shared = [t for t in ra.tasks if t in rb.tasks]
    tests = paired_tests(ra, rb, shared, names=(na, nb), n_resamples=10_000)
    if not tests:
        raise SpearError(
            f"{a} and {b} share no items (tasks A: {sorted(ra.tasks)}, B: {sorted(rb.tasks)}): evaluate both "
            "with the same suite, --limit and --seed."
        )
    table = Table(
        title=f"{na} (A) against {nb} (B), paired on shared items",
        caption="diff: accuracy A−B; for perplexity NLL/token A−B (< 0 favours A)",
    )
    for col in ("task", "A", "B", "diff", "test", "p", "n", "better"):
        table.add_column(col, no_wrap=True, justify="left" if col in ("task", "test") else "right")
    for t in tests:
        ta, tb = ra.tasks[t.task], rb.tasks[t.task]
        p = "<0.001" if t.p_value < 0.001 else f"{t.p_value:.3f}"
        test = "McNemar" if t.test.startswith("mcnemar") else "bootstrap"
        table.add_row(
            f"{t.task} ({t.group}, {ta.metric})",
            f"{ta.score:.4f}",
            f"{tb.score:.4f}",
            f"{t.diff:+.4f}",
            test,
            p,
            str(t.n),
            t.favours if t.significant else "—",
        )
    out_console.print(table)
    for name in (na, nb):
        wins = [t.task for t in tests if t.significant and t.favours == name]
        if wins:
            out_console.print(f"{name} better (p < {ALPHA:g}) on: {', '.join(wins)}")
    ties = [t.task for t in tests if not t.significant]
    if ties:
        out_console.print(f"not distinguishable on: {', '.join(ties)}")
    missing = sorted(set(ra.tasks) ^ set(rb.tasks))
    if missing:
        out_console.print(f"not compared (only one model has them): {', '.join(missing)}")
    if any(t.n < min(ra.tasks[t.task].n, rb.tasks[t.task].n) for t in tests):
        out_console.print("[yellow]note:[/] some tasks were scored on different items; only the shared ones count.")


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_cmd)

"""`spear-mm demo`: the embedded default — SmolLM2-135M-Instruct, CPT on shipped finance prose, the whole run."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from spear_mm.cli.choices import DEVICE_METAVAR
from spear_mm.cli.output import console, out_console, wide_console
from spear_mm.cli.progress import LOOKS, Drawer
from spear_mm.cli.run import quiet_per_model_logs, results_table
from spear_mm.demo.run import DemoConfig, run_demo
from spear_mm.errors import SpearError
from spear_mm.report.build import read_results


def scores_table(run_dir: Path, summary) -> Table:
    """Every model's score on every task (base, adapted, candidates), beside R and K."""
    results = read_results(run_dir)
    entries = {**summary.reference, **summary.candidates}
    order = [n for n in (summary.base, summary.adapted) if n in results]
    order += sorted((n for n in results if n not in order), key=lambda n: (entries[n].kind if n in entries else "", n))
    tasks = list(summary.tasks) or list(dict.fromkeys(t for r in results.values() for t in r.tasks))
    table = Table(title="demo results (accuracy for MC; perplexity for ppl tasks — lower is better)")
    table.add_column("model", no_wrap=True)
    for t in tasks:
        table.add_column(f"{t.removeprefix('demo_')}\n({summary.tasks.get(t, '')})", justify="right", overflow="fold")
    table.add_column("R", justify="right")
    table.add_column("K", justify="right")
    for name in order:
        r, e = results[name], entries.get(name)
        cells = []
        for t in tasks:
            tr = r.tasks.get(t)
            cells.append(
                "—" if tr is None else f"{tr.metrics['ppl']:.2f}" if "ppl" in tr.metrics else f"{tr.score:.3f}"
            )
        label = f"[bold green]{name} ✓[/]" if name == summary.chosen else name
        fmt = lambda x: "—" if x is None else f"{x:.3f}"  # noqa: E731
        table.add_row(label, *cells, fmt(e.retention if e else None), fmt(e.gain_kept if e else None))
    return table


def demo_cmd(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Run folder (a re-run resumes it)."),
    quick: bool = typer.Option(False, "--quick", help="A reduced demo (fewer CPT steps and items) for CI."),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Public data (shared/data layout): CPT on Reuters TRAIN, general + domain suites."
    ),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Model/CPT cache (default $SPEAR_MM_CACHE or ~/.cache/spear-mm)."
    ),
    base: Path | None = typer.Option(None, "--base", help="Another base model folder instead of SmolLM2-135M."),
    steps: int | None = typer.Option(None, "--steps", help="CPT steps (default: 24; 10 with --quick)."),
    lr: float | None = typer.Option(None, "--lr", help="CPT peak learning rate."),
    seq_len: int | None = typer.Option(None, "--seq-len", help="CPT tokens per block."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="CPT blocks per step."),
    limit: int | None = typer.Option(None, "--limit", help="Items per task in validation."),
    threads: int = typer.Option(1, "--threads", help="Torch CPU threads (1 measured fastest on 2 shared cores)."),
    device: str = typer.Option("cpu", metavar=DEVICE_METAVAR, help="Where CPT, merges and evaluation run."),
    policies: str | None = typer.Option(
        None,
        "--policies",
        help="Comma-separated presets and/or 'measured' (the probe-driven planner) "
        "[conservative,balanced,aggressive,measured; the presets only with --quick].",
    ),
    baselines: bool | None = typer.Option(
        None, "--baselines/--no-baselines", help="Uniform SLERP, task arithmetic, TIES (default: on; off with --quick)."
    ),
    target_retention: float | None = typer.Option(None, "--target-retention", help="Choose the most K with R ≥ this."),
    skip_task: list[str] | None = typer.Option(None, "--skip-task", help="Leave a task out (repeatable), e.g. gsm8k."),
    workers: int = typer.Option(
        1, "--workers", "-j", help="Evaluate N candidates at once in a process pool (for idle cores; default 1)."
    ),
    force: bool = typer.Option(
        False, "--force", help="-o holds a run of another pair: move it aside (NAME.replaced-TIME), start afresh."
    ),
) -> None:
    """Run the whole SPEAR-MM story on a real small model: CPT (cached) → score → plan → merge → validate."""
    try:
        config = DemoConfig(
            quick=quick,
            data_dir=data_dir,
            cache_dir=cache_dir,
            base=base,
            steps=steps,
            lr=lr,
            seq_len=seq_len,
            batch_size=batch_size,
            limit=limit,
            threads=threads,
            device=device,
            policies=None if policies is None else tuple(p.strip() for p in policies.split(",") if p.strip()),
            baselines=baselines,
            target_retention=target_retention,
            skip_tasks=tuple(skip_task or ()),
            extra_run_options={"executor": "process", "workers": workers} if workers > 1 else {},
        )
    except ValueError as exc:
        raise SpearError(f"demo: invalid option — {exc}") from exc
    quiet_per_model_logs()  # transformers' loading bars (base samples, CPT, the planner) would drown the stages
    with Drawer(LOOKS) as progress:
        result = run_demo(out, config, progress=progress, log=console.print, force=force)
    summary = result.summary
    wide_console().print(scores_table(result.run_dir, summary))
    out_console.print(results_table(summary))
    if summary.curve_note:
        out_console.print(summary.curve_note)
    if summary.choice_reason:
        out_console.print(f"choice: {summary.choice_reason}")
    times = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    out_console.print(f"wall time: {times}")
    out_console.print(f"report: {result.report}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)

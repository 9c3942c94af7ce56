"""`spear-mm evaluate` (general/domain suites on one or more models) and `spear-mm report` (run-dir report)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.table import Table

from spear_mm.cli import checks
from spear_mm.cli.choices import (
    BACKEND_OPTION,
    DEVICE_METAVAR,
    DOMAIN_TASKS_OPTION,
    GENERAL_TASKS_OPTION,
    LM_EVAL_INCLUDE_OPTION,
    SUITE_OPTION,
    TASKS_OPTION,
    Backend,
    lm_eval_selection,
)
from spear_mm.cli.output import console, out_console
from spear_mm.cli.progress import LOOKS, Drawer, Look
from spear_mm.errors import SpearError
from spear_mm.evaluation import evaluate, load_tasks
from spear_mm.evaluation.lm_eval_tasks import check_no_clash, preflight
from spear_mm.evaluation.metrics import tradeoff
from spear_mm.evaluation.noise import excluded_tasks
from spear_mm.io.dtypes import DtypeName, parse_dtype
from spear_mm.io.hub import resolve_model
from spear_mm.io.workdir import WorkDir
from spear_mm.report.build import write_report
from spear_mm.report.guard import check_report_output


def _names(models: list[Path]) -> list[str]:
    """Result names from folder names, made unique (`merged`, `merged-2`, ...)."""
    names: list[str] = []
    for m in models:
        name = m.expanduser().resolve().name or "model"
        base, k = name, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def _table(results: list, base: str | None, adapted: str | None) -> Table:

    table = Table(title="evaluation (score ± stderr; majority-class baseline for multiple choice)")
    table.add_column("task")
    table.add_column("metric")
    for r in results:
        table.add_column(r.model, justify="right")
    tasks = list(dict.fromkeys(t for r in results for t in r.tasks))
    for t in tasks:
        first = next(r.tasks[t] for r in results if t in r.tasks)
        metric = first.metric + (f" (maj {first.majority_baseline:.2f})" if first.majority_baseline else "")
        cells = []
        for r in results:
            tr = r.tasks.get(t)
            extra = f" · ppl {tr.metrics['ppl']:.2f}" if tr is not None and "ppl" in tr.metrics else ""
            cells.append("—" if tr is None else f"{tr.score:.4f} ± {tr.stderr or 0:.4f}{extra}")
        table.add_row(f"{t} [dim]({first.group}, n={first.n})[/]", metric, *cells)
    by_name = {r.model: r for r in results}
    if base in by_name and adapted in by_name:
        left_out = list(excluded_tasks(by_name[base], by_name[adapted]))  # chance-level tasks, as run and report
        rk = [tradeoff(r, by_name[base], by_name[adapted], exclude=left_out) for r in results]
        if left_out:
            table.caption = f"left out of R and K (at chance level for base and adapted): {', '.join(left_out)}"
        table.add_row("[bold]R[/] general retention", "mean ratio", *[_fmt(x.retention) for x in rk])
        table.add_row("[bold]K[/] domain gain kept", "mean", *[_fmt(x.gain_kept) for x in rk])
    return table


def _roles(names: list[str], base: str | None, adapted: str | None) -> dict[str, str]:
    """{result name: 'base' | 'adapted'} from --base/--adapted, saved in the results so `report` needs no flags."""
    roles: dict[str, str] = {}
    for flag, name, role in (("--base", base, "base"), ("--adapted", adapted, "adapted")):
        if name is None:
            continue
        if name not in names:
            raise SpearError(
                f"{flag} {name!r}: no model of this evaluation has that name; the results are named "
                f"{', '.join(names)} (a folder's name, or a hub id's last part). Pass one of these."
            )
        if name in roles:
            raise SpearError(f"--base and --adapted both name {name!r}: name two different models.")
        roles[name] = role
    return roles


def _fmt(x: float | None) -> str:
    return "undefined" if x is None else f"{x:.3f}"


def evaluate_cmd(
    models: list[Path] = typer.Argument(..., help="Model folders (Hugging Face format) or hub ids org/name(@rev)."),
    suite: str | None = SUITE_OPTION,
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder in the shared/data layout."),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Writes <out>/<model>.json per model."),
    limit: int | None = typer.Option(None, "--limit", help="Items per task (seeded, stratified by label)."),
    backend: Backend = BACKEND_OPTION,
    device: str = typer.Option("cpu", metavar=DEVICE_METAVAR, help="Where the models run."),
    dtype: DtypeName | None = typer.Option(
        None, "--dtype", help="Compute dtype (default: fp32 on CPU, else the model's)."
    ),
    threads: int | None = typer.Option(None, help="Torch CPU threads (default: torch's choice)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Items per batch."),
    max_length: int | None = typer.Option(None, "--max-length", help="Context length cap (default: model's, ≤2048)."),
    seed: int = typer.Option(0, help="Seed of the --limit sample."),
    base: str | None = typer.Option(
        None, help="Name of the base model's result: adds R to the table; recorded for `report`."
    ),
    adapted: str | None = typer.Option(
        None, help="Name of the adapted model's result: adds K to the table; recorded for `report`."
    ),
    skip_missing: bool = typer.Option(False, "--skip-missing", help="Skip tasks whose data file is absent."),
    tasks: str | None = TASKS_OPTION,
    general_tasks: str | None = GENERAL_TASKS_OPTION,
    domain_tasks: str | None = DOMAIN_TASKS_OPTION,
    lm_eval_include: Path | None = LM_EVAL_INCLUDE_OPTION,
    force: bool = typer.Option(
        False, "--force", help="-o holds a result of another model of the same name: move it to OUT/replaced/."
    ),
) -> None:
    """Evaluate MODELS on the general and domain suites (same items for every model) and save the results."""

    checks.device(device)
    checks.positive("--limit", limit)
    checks.positive("--threads", threads)
    checks.positive("--batch-size", batch_size)
    checks.positive("--max-length", max_length)
    if backend not in {"builtin", "lm-eval"}:
        raise SpearError(f"--backend {backend!r}: use builtin or lm-eval")

    suite, backend, registered = lm_eval_selection(suite, backend, tasks, general_tasks, domain_tasks, lm_eval_include)
    if registered is not None:
        preflight(registered)  # datasets loaded (or a clear error) before any model work
    names = _names(models)
    roles = _roles(names, base, adapted)
    models = [resolve_model(m) for m in models]  # every hub id fetched (or found offline) before any evaluation
    skipped: dict[str, str] = {}
    loaded = load_tasks(suite, data_dir, limit, seed, skip_missing=skip_missing, skipped=skipped) if suite else []
    if not loaded and registered is None:
        raise SpearError("no task to run: every task's data is missing (see the warnings above)")
    if registered is not None:
        check_no_clash(registered, loaded)
    results = []
    reads = [*models, *(p for p in (data_dir, lm_eval_include) if p), *([Path(suite)] if _is_file(suite) else [])]
    drawer = Drawer(LOOKS | {"items": Look(text="{label}", per_label=True)})  # a bar per model · task
    with WorkDir(out, reads), drawer as progress:
        for path, name in zip(models, names, strict=True):
            check_same_model(out / f"{name}.json", path, force)
        for path, name in zip(models, names, strict=True):
            result = evaluate(
                path,
                loaded,
                device=device,
                limit=limit,
                batch_size=batch_size,
                threads=threads,
                seed=seed,
                backend=backend,
                dtype=parse_dtype(dtype),
                max_length=max_length,
                name=name,
                progress=progress,
                lm_eval_tasks=registered,
            )
            result.skipped.update(skipped)
            result.role = roles.get(name)
            result.save(out / f"{name}.json")
            results.append(result)
    out_console.print(_table(results, base, adapted))
    tokenizers = {r.tokenizer for r in results}
    if len(tokenizers) > 1:
        console.print("[yellow]warning:[/] the models use different tokenizers: compare perplexity by bits_per_byte")
    console.print(f"results: {', '.join(str(out / f'{r.model}.json') for r in results)}")


def _is_file(suite: str | None) -> bool:
    return bool(suite) and Path(suite).is_file()


def check_same_model(result: Path, model: Path, force: bool) -> None:
    """A result file of another model (same folder name, other path) is not replaced unasked: refused, or with
    `force` moved to OUT/replaced/NAME-TIME.json."""
    try:
        previous = json.loads(result.read_bytes().decode("utf-8")).get("model_path")
    except (OSError, ValueError, AttributeError):
        return  # none, or not a result: written afresh as before
    here = str(Path(model).expanduser().resolve())
    if not previous or previous == here:
        return
    if not force:
        raise SpearError(
            f"{result} holds the results of another model ({previous}; this one is {here}, with the same folder "
            "name). Choose another -o, or pass --force to move the old result to "
            f"{result.parent / 'replaced'}/ and write this one."
        )
    aside = result.parent / "replaced" / f"{result.stem}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    aside.parent.mkdir(exist_ok=True)
    result.replace(aside)
    console.print(f"[yellow]note:[/] moved the result of {previous} to {aside}")


def report_cmd(
    run_dir: Path = typer.Argument(..., help="Run folder with eval/<model>.json (and optional summary.json)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Where to write report.md/html (default RUN_DIR)."),
    base: str | None = typer.Option(
        None, help="Base model name (default: summary.json, else the one `evaluate --base` named, else 'base')."
    ),
    adapted: str | None = typer.Option(
        None, help="Adapted model name (default: summary.json, else `evaluate --adapted`'s, else 'adapted')."
    ),
    chosen: str | None = typer.Option(None, help="Candidate to circle as chosen (default: summary.json)."),
    against: str | None = typer.Option(None, "--against", help="Also test every model against this one (paired)."),
    keep_chance_tasks: bool | None = typer.Option(
        None, "--keep-chance-tasks/--drop-chance-tasks", help="Keep tasks at chance level in R and K [summary.json]."
    ),
) -> None:
    """Write report.md and a self-contained report.html (figures embedded) for a run folder."""

    if out is not None:  # the default, RUN_DIR itself, holds what the report reads: only report files are replaced
        check_report_output(run_dir, out)
    md, html = write_report(
        run_dir,
        out_dir=out,
        base=base,
        adapted=adapted,
        chosen=chosen,
        against=against,
        keep_chance_tasks=keep_chance_tasks,
    )
    out_console.print(f"wrote {md} and {html}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_cmd)
    app.command("report")(report_cmd)

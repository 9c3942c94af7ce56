"""`spear-mm merge` and `spear-mm inspect`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer
from rich.table import Table

from spear_mm.cli import checks
from spear_mm.cli.choices import DEVICE_METAVAR, method_option
from spear_mm.cli.output import out_console
from spear_mm.cli.progress import Drawer, Look
from spear_mm.errors import SpearError
from spear_mm.io.architecture import for_model_type, num_layers_of
from spear_mm.io.checkpoint import Checkpoint
from spear_mm.io.dtypes import DtypeName, parse_dtype
from spear_mm.io.pair import open_pair
from spear_mm.merging.merge import build_ops, merge, resolve_device
from spear_mm.planning.plan import Plan


def _resolve_plan(plan_file: Path | None, t: float | None, num_layers: int, layers_only: bool, method: str | None):

    if (plan_file is None) == (t is None):
        raise SpearError("give exactly one of --plan plan.yaml or --t T (the weight of the base, 0..1).")
    if plan_file is not None:
        if layers_only or method is not None:
            raise SpearError("--layers-only and --method go with --t; a plan file sets every unit's t and method.")
        return Plan.load(plan_file)
    if not 0.0 <= t <= 1.0:
        raise SpearError(f"--t {t} is outside [0, 1] (t is the weight of the base model).")
    return Plan.uniform(t, num_layers, include_non_layers=not layers_only, method=method or "slerp")


def merge_cmd(
    base: Path = typer.Argument(..., help="Base model folder (before CPT) or hub id org/name(@rev)."),
    adapted: Path = typer.Argument(..., help="Adapted model folder (after CPT) or hub id org/name(@rev)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (written atomically)."),
    plan: Path | None = typer.Option(None, "--plan", help="Restoration plan YAML (spear-mm plan)."),
    t: float | None = typer.Option(
        None, "--t", help="Uniform SLERP factor for EVERY tensor (weight of the base; --t 1 gives the base exactly)."
    ),
    layers_only: bool = typer.Option(
        False, "--layers-only", help="With --t: only the transformer layers; embeddings, head, final norm kept."
    ),
    method: str | None = method_option(None, "With --t: the merge method (default slerp; see ls methods)."),
    stats: Path | None = typer.Option(
        None, "--stats", help="Statistics folder of `spear-mm stats` (regmean/fisher; overrides the plan's)."
    ),
    device: str = typer.Option("cpu", metavar=DEVICE_METAVAR, help="Where the kernels run."),
    threads: int | None = typer.Option(None, help="Torch threads for the kernels (default 1: measured fastest)."),
    max_shard_size: str = typer.Option("5GB", help="Largest output shard, e.g. 5GB or 500MB."),
    allow_vocab_extension: bool = typer.Option(False, help="Merge shared embedding rows, keep new rows."),
    force: bool = typer.Option(False, help="Replace a non-empty output folder (only once the merge is complete)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the action and t of every tensor; write nothing."),
    out_dtype: DtypeName | None = typer.Option(
        None, "--out-dtype", help="dtype of the written tensors (default: the adapted model's)."
    ),
) -> None:
    """Merge ADAPTED back toward BASE where the plan says (SLERP per tensor) and write an HF model folder."""

    checks.positive("--threads", threads)
    checks.file_option("--plan", plan)
    resolve_device(device)
    pair = open_pair(base, adapted, allow_vocab_extension=allow_vocab_extension)
    the_plan = _resolve_plan(plan, t, pair.num_layers, layers_only, method)
    if stats is not None:
        the_plan = the_plan.model_copy(update={"statistics": str(stats)})
    ops = build_ops(pair, the_plan, parse_dtype(out_dtype))
    if dry_run:
        table = Table(title=f"dry run: {the_plan.summary()}")
        for col in ("tensor", "layer", "module", "action", "t", "dtype"):
            table.add_column(col)
        for op in ops:
            p = op.param
            layer, dtype = "" if p.layer is None else str(p.layer), str(op.out_dtype).removeprefix("torch.")
            table.add_row(p.name, layer, p.module, op.action, f"{op.t:g}", dtype)
        out_console.print(table)
        return
    with Drawer({"merge": Look("merge")}) as progress:  # bytes written, the tensor's name beside the bar
        report = merge(
            pair.base,
            pair.adapted,
            out,
            the_plan,
            device=device,
            max_shard_size=max_shard_size,
            force=force,
            allow_vocab_extension=allow_vocab_extension,
            threads=threads,
            progress=progress,
            out_dtype=parse_dtype(out_dtype),
            inputs=(plan,) if plan is not None else (),
        )
    actions = Counter(s.action for s in report.tensors)
    table = Table(title=f"merged → {report.output}")
    table.add_column("what")
    table.add_column("value", justify="right")
    for k, v in (
        ("tensors", report.n_tensors),
        ("interpolated", actions["merge"]),
        ("kept (adapted)", actions["keep"]),
        ("restored (base)", actions["base"]),
        ("LERP fallbacks (|cos|>0.9995)", report.n_lerp_fallback),
        ("written", f"{report.bytes_written / 1e9:.3f} GB"),
        ("time", f"{report.seconds:.1f} s"),
        ("dtype", report.out_dtype or "as adapted"),
        ("plan", report.plan_summary),
        *(("note", n) for n in report.notes),
    ):
        table.add_row(k, str(v))
    out_console.print(table)


def inspect_cmd(
    model: Path = typer.Argument(..., help="A Hugging Face model folder or hub id org/name(@rev)."),
) -> None:
    """Print layers, module types, dtypes and sizes of a checkpoint (reads headers only)."""

    ckpt = Checkpoint.open(model)
    arch = for_model_type(ckpt.model_type)
    params = arch.classify_all(ckpt.names)
    out_console.print(
        f"[bold]{ckpt.path}[/]  model_type={ckpt.model_type} family={arch.family} "
        f"layers={num_layers_of(ckpt.config)} params={ckpt.num_parameters / 1e6:.2f}M "
        f"size={ckpt.nbytes / 1e9:.3f} GB files={len({i.file for i in ckpt.infos.values()})}"
    )
    table = Table()
    for col in ("group", "module", "tensors", "layers", "shapes", "dtypes", "MB"):
        table.add_column(col)
    groups: dict[tuple[str, str], list] = {}
    for name, p in params.items():
        groups.setdefault((p.group, p.module), []).append((p, ckpt.infos[name]))
    for (group, module), items in sorted(groups.items(), key=lambda kv: (kv[0][0] != "embed", kv[0])):
        layers = sorted({p.layer for p, _ in items if p.layer is not None})
        shapes = sorted({str(list(i.shape)) for _, i in items})
        table.add_row(
            group,
            module,
            str(len(items)),
            f"{layers[0]}–{layers[-1]}" if layers else "",
            ", ".join(shapes[:3]) + (" …" if len(shapes) > 3 else ""),
            ", ".join(sorted({str(i.dtype).replace("torch.", "") for _, i in items})),
            f"{sum(i.nbytes for _, i in items) / 1e6:.1f}",
        )
    out_console.print(table)


def register(app: typer.Typer) -> None:
    app.command("merge")(merge_cmd)
    app.command("inspect")(inspect_cmd)

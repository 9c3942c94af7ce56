"""`spear-mm analyze` (score layers) and `spear-mm plan` (policy → restoration plan, exports)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.panel import Panel
from rich.table import Table

from spear_mm.cli import checks
from spear_mm.cli.choices import (
    DEVICE_METAVAR,
    Aggregate,
    Edge,
    Executor,
    Normalize,
    Precision,
    RankBy,
    SnrNormalize,
    method_option,
    policy_option,
    value,
)
from spear_mm.cli.config_options import given_spellings, parameters, typed, with_signature
from spear_mm.cli.output import out_console
from spear_mm.cli.planner import (
    DOMAIN_PROBE_OPTION,
    GENERAL_PROBE_OPTION,
    PLANNER_FLAGS,
    measured_from_cli,
    measurement_panel,
    planner_options,
    refuse_ignored,
)
from spear_mm.cli.progress import LOOKS, Drawer, Look
from spear_mm.errors import SpearError, validation_message
from spear_mm.io.checkpoint import Checkpoint
from spear_mm.io.outputs import check_new_file, check_not_input, write_file
from spear_mm.io.workdir import check_no_outside_links
from spear_mm.planning.exports import check_mergekit, mergekit_yaml, write_freeze_plan
from spear_mm.planning.policies import describe, make_plan
from spear_mm.scoring.layers import ScoreConfig, analyze
from spear_mm.scoring.table import ScoreTable


def _top_table(table, n: int = 10) -> Table:
    t = Table(title=f"Top {min(n, table.num_layers)} layers by impact score (of {table.num_layers})")
    for col in ("rank", "layer", "score", "rel. change", "SWC_n", "|drop|_n", "top module"):
        t.add_column(col, justify="right" if col != "top module" else "left")
    probe = table.probe is not None
    if probe:
        t.add_column("act. drift", justify="right")
        t.add_column("restore gain", justify="right")
    for s in sorted(table.layers, key=lambda s: s.rank)[:n]:
        row = [f"{s.rank}", f"{s.layer}", f"{s.score:.3g}", f"{s.rel_change:.2%}", f"{s.swc_n:.3g}", f"{s.drop_n:.3g}"]
        row.append(s.top_module or "-")
        if probe:
            row += [_fmt(s.activation_drift), _fmt(s.restore_gain)]
        t.add_row(*row)
    return t


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _action(t: float) -> str:
    return "keep" if t == 0 else "base" if t == 1 else "restore"


def _non_layer_table(table) -> Table | None:
    """The units outside the blocks, with their place in the joint ranking (scores from before units: rc only)."""
    units = [u for u in table.units if u.layer is None]
    if not units:
        rows = [m for m in table.non_layer() if len(m.shape) >= 1]
        if not rows:
            return None
        t = Table(title="Outside the transformer blocks (relative change only)")
        for col in ("tensor", "group", "rel. change", "cos"):
            t.add_column(col, justify="left" if col in ("tensor", "group") else "right")
        for m in rows:
            t.add_row(m.name, m.group, f"{m.rel_change:.2%}", f"{m.cos:.6f}")
        return t
    t = Table(title=f"Units outside the blocks, ranked with the layers (of {len(table.units)} units)")
    for col in ("rank", "unit", "score", "rel. change", "cos", "row drift median / p99", "SWC"):
        t.add_column(col, justify="right")
    for u in sorted(units, key=lambda u: u.rank):
        rows = "-" if u.row_drift_median is None else f"{u.row_drift_median:.2%} / {u.row_drift_p99:.2%}"
        name = u.unit + (" (tied lm_head)" if u.tied else "")
        t.add_row(str(u.rank), name, f"{u.score:.3g}", f"{u.rel_change:.2%}", _fmt(u.cos), rows, _fmt(u.swc))
    return t


def _trust_panel(table) -> Panel | None:
    p = table.probe
    if p is None:
        return None
    lines = [f"probe: {p.probe} ({p.tokens} tokens); NLL base {_fmt(p.nll_base)}, adapted {_fmt(p.nll_adapted)}"]
    if p.spearman_cka is not None:
        lines.append(f"Spearman(weight score, activation drift 1−CKA) = {p.spearman_cka:+.3f}")
    if p.spearman_ground_truth is not None:
        rho = p.spearman_ground_truth
        verdict = (
            "trust the cheap score"
            if rho >= 0.6
            else "weak: prefer --ground-truth ranks"
            if rho >= 0.3
            else "do NOT trust the cheap score on this model"
        )
        lines.append(f"[bold]Spearman(weight score, ground truth restore gain) = {rho:+.3f}[/]  → {verdict}")
    return Panel("\n".join(lines), title="Can the weight-only score be trusted here?", border_style="cyan")


def analyze_cmd(
    base: Path = typer.Argument(..., help="Base model folder (before CPT) or hub id org/name(@rev)."),
    adapted: Path = typer.Argument(..., help="Adapted model folder (after CPT) or hub id org/name(@rev)."),
    out: Path = typer.Option(..., "--out", "-o", help="Scores folder: scores.json/.csv, layer_scores.csv, figures."),
    device: str = typer.Option("cpu", metavar=DEVICE_METAVAR, help="Where singular values are computed."),
    workers: int | None = typer.Option(
        None, "--workers", "-j", help="Workers (default: one per CPU core; ray: every CPU of the cluster)."
    ),
    executor: Executor = typer.Option(
        Executor.local, help="Where tensors are scored: local (threads), process (process pool), ray (Ray tasks)."
    ),
    ray_address: str | None = typer.Option(
        None, help="ray: an existing cluster ('auto' or HOST:PORT, see docs/scaling.md); default starts a local one."
    ),
    alpha: float = typer.Option(0.5, help="Weight of SNR-weighted change vs SVD drop in the combined score."),
    aggregate: Aggregate = typer.Option(Aggregate.mean, help="Layer score from its matrices."),
    normalize: Normalize = typer.Option(Normalize.robust_z, help="Normalisation within a module type."),
    edge: Edge = typer.Option(
        Edge.mp, help="Noise edge: mp (calibrated Marchenko–Pastur) or spectrum (Spectrum's formula)."
    ),
    precision: Precision = typer.Option(Precision.auto, help="Precision of the singular values."),
    snr_normalize: SnrNormalize | None = typer.Option(
        None, help="max: divide SNR by σ₁ as Spectrum does (off by default)."
    ),
    delta_spectrum: bool = typer.Option(True, help="Also the spectrum of ΔW (diagnostic SNR/effective rank)."),
    probe: Path | None = typer.Option(None, "--probe", help="General text file: per-layer activation drift (1−CKA)."),
    ground_truth: bool = typer.Option(False, "--ground-truth", help="Restore each layer alone, measure probe NLL."),
    probe_tokens: int = typer.Option(
        2048, help="Tokens of the --probe text for the drift (1−CKA) and --ground-truth (not the planner's probes)."
    ),
    allow_vocab_extension: bool = typer.Option(
        False, help="The adapted model added vocabulary rows: score the rows shared with the base."
    ),
    force: bool = typer.Option(
        False, "--force", help="-o holds another pair's scores: move that folder aside (NAME.replaced-TIME)."
    ),
) -> None:
    """Score every layer of ADAPTED against BASE from the weights (and optionally probe text)."""

    checks.device(device)
    checks.positive("--workers", workers)
    checks.positive("--probe-tokens", probe_tokens)
    checks.file_option("--probe", probe)
    executor, aggregate = value(executor), value(aggregate)
    normalize, edge, precision = value(normalize), value(edge), value(precision)
    if ground_truth and probe is None:
        raise SpearError("--ground-truth needs --probe FILE (general text the NLL is measured on).")
    try:
        config = ScoreConfig(
            alpha=alpha,
            normalize=normalize,
            edge=edge,
            precision=precision,
            snr_normalize=value(snr_normalize),
            delta_spectrum=delta_spectrum,
        )
    except ValidationError as exc:
        raise SpearError(validation_message(exc)) from exc
    if ray_address is not None and executor != "ray":
        raise SpearError("--ray-address needs --executor ray.")
    with Drawer(LOOKS | {"analyze": Look("scoring tensors")}, transient=True) as progress:
        table = analyze(
            base,
            adapted,
            out,
            alpha=alpha,
            aggregate=aggregate,
            device=device,
            workers=workers,
            executor=executor,
            ray_address=ray_address,
            probe=probe,
            ground_truth=ground_truth,
            progress=progress,
            config=config,
            probe_tokens=probe_tokens,
            allow_vocab_extension=allow_vocab_extension,
            force=force,
        )
    out_console.print(_top_table(table))
    extra = _non_layer_table(table)
    if extra is not None:
        out_console.print(extra)
    panel = _trust_panel(table)
    if panel is not None:
        out_console.print(panel)
    tm = table.timing
    out_console.print(
        f"scored {len(table.modules)} tensors in {tm.weights_seconds:.1f} s ({executor}: {tm.workers} workers × {tm.torch_threads} "
        f"torch threads, {tm.device}; precision {tm.precision_counts})"
        + (f"; probes {tm.probe_seconds:.1f} s" if tm.probe_seconds else "")
    )
    out_console.print(f"wrote {out}/scores.json, scores.csv, layer_scores.csv, heatmap.png, layer_scores.png")
    out_console.print(f"next: spear-mm plan {out} --policy balanced -o plan.yaml")


def _floats(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError as exc:
        raise SpearError(f"--layers must be comma-separated numbers, got {text!r}.") from exc


def plan_cmd(
    ctx: typer.Context,
    scores: Path = typer.Argument(..., help="Scores folder written by `spear-mm analyze`."),
    out: Path = typer.Option(..., "--out", "-o", help="Plan YAML to write."),
    policy: str = policy_option(
        "balanced", "Preset or rule that picks the restored units (measured: the probe-driven planner)."
    ),
    rank_by: RankBy = typer.Option(RankBy.score, "--rank-by", help="Ranking the policy restores from."),
    fraction: float | None = typer.Option(None, help="Share of layers to restore (presets, fraction)."),
    t: float | None = typer.Option(None, "--t", help="SLERP t toward the base (0 keeps adapted, 1 = base)."),
    k: int | None = typer.Option(None, "--k", help="Number of top-ranked layers to restore (top-k, presets)."),
    layers: str | None = typer.Option(None, "--layers", help="custom: one t per layer, comma-separated."),
    embed: float | None = typer.Option(None, help="t for the embeddings (default: the policy decides, by rank)."),
    head: float | None = typer.Option(None, help="t for lm_head (default: the policy decides)."),
    final_norm: float | None = typer.Option(None, help="t for the final norm (default: the policy decides)."),
    method: str = method_option("slerp", "How restored units are merged."),
    stats: Path | None = typer.Option(
        None, "--stats", help="regmean/fisher: the statistics folder (spear-mm stats), recorded in the plan."
    ),
    base: Path | None = typer.Option(None, help="Base folder: check the scores belong to this pair."),
    adapted: Path | None = typer.Option(None, help="Adapted folder: check the scores belong to this pair."),
    export_mergekit: Path | None = typer.Option(None, "--export-mergekit", help="Also write a mergekit SLERP config."),
    export_freeze: Path | None = typer.Option(
        None, "--export-freeze", help="Also write a freeze YAML for the next CPT."
    ),
    domain_probe: Path | None = DOMAIN_PROBE_OPTION,
    general_probe: Path | None = GENERAL_PROBE_OPTION,
    force: bool = typer.Option(False, "--force", help="Replace an existing plan file (and export files)."),
    **planner: Any,
) -> None:
    """Turn a layer ranking into a restoration plan (reviewable YAML), optionally exported for mergekit/CPT.

    Check a plan against a model without merging: spear-mm plan validate PLAN.yaml MODEL.
    """

    refuse_ignored(
        value(policy),
        {
            "--fraction": fraction,
            "--t": t,
            "--k": k,
            "--layers": layers,
            "--embed": embed,
            "--head": head,
            "--final-norm": final_norm,
            "--domain-probe": domain_probe,
            "--general-probe": general_probe,
            **dict.fromkeys(given_spellings(PLANNER_FLAGS, typed(ctx, planner)), True),
        },
    )
    table = ScoreTable.load(scores)
    if (base is None) != (adapted is None):
        raise SpearError("give both --base and --adapted (to check the scores belong to that pair), or neither.")
    if base is not None:
        table.check_pair(Checkpoint.open(base).fingerprint(), Checkpoint.open(adapted).fingerprint(), str(scores))
    policy, method, rank_by = value(policy), value(method), value(rank_by)
    inputs = [scores / "scores.json" if scores.is_dir() else scores, table.base, table.adapted]  # the scored pair
    inputs += [p for p in (base, adapted, domain_probe, general_probe) if p is not None]  # probes are read too
    out, export_mergekit, export_freeze = check_plan_outputs(
        out, export_mergekit, export_freeze, inputs, force, measured=policy == "measured"
    )
    if export_mergekit is not None:
        check_mergekit(method)  # a TIES / task-arithmetic / data-aware plan: refused before any work or write
    if policy == "measured":
        options = planner_options(typed(ctx, planner))
        plan = measured_from_cli(
            table, base, adapted, out, domain_probe, general_probe, options, rank_by, method, stats
        )
    else:
        plan = make_plan(
            table,
            policy,
            fraction=fraction,
            t=t,
            k=k,
            layer_ts=_floats(layers),
            embed=embed,
            head=head,
            final_norm=final_norm,
            method=method,
            rank_by=rank_by,
        )
    if stats is not None and plan.statistics is None and plan.needs_statistics():
        plan = plan.model_copy(update={"statistics": str(stats)})
    mergekit = mergekit_yaml(plan, table.base, table.adapted) if export_mergekit is not None else None
    write_file(out, plan.to_yaml(), inputs, "plan file", force=force)  # after the export is known to work
    rows = describe(plan)
    view = Table(title=f"Plan '{policy}': {len(rows)} of {plan.num_layers} layers move toward the base ({method})")
    for col in ("rank", "unit", "t (base weight)", "action", "score"):
        view.add_column(col, justify="right")
    for layer, t_, action, rank, score in rows:
        view.add_row(_fmt(rank), f"layer.{layer}", f"{t_:g}", action, _fmt(score))
    for unit, info in plan.units.items():
        view.add_row(_fmt(info.rank), unit, f"{plan.unit_t(unit):g}", _action(plan.unit_t(unit)), _fmt(info.score))
    out_console.print(view)
    if plan.measurement is not None:
        out_console.print(measurement_panel(plan))
    if not plan.units:  # scores from before units: the non-layer t are not in the table
        out_console.print(f"embed t={plan.embed:g}, head t={plan.head:g}, final norm t={plan.final_norm:g}")
    out_console.print("units not listed keep the adapted weights (t = 0)")
    out_console.print(f"wrote {out}")
    if export_mergekit is not None and mergekit is not None:
        write_file(export_mergekit, mergekit, inputs, "--export-mergekit file", force=force)
        out_console.print(f"wrote {export_mergekit} (mergekit-yaml {export_mergekit} OUT)")
    if export_freeze is not None:
        write_freeze_plan(plan, export_freeze)
        out_console.print(
            f"wrote {export_freeze} (frozen layers: {plan.frozen_layers() or 'none: no layer has t = 1'})"
        )


def check_plan_outputs(
    out: Path, mergekit: Path | None, freeze: Path | None, inputs: list, force: bool, measured: bool
) -> tuple[Path, Path | None, Path | None]:
    """Every file `plan` writes, checked before any work: not an input, not existing unless --force, distinct;
    with --policy measured also the planner's cache folder `<plan>.probes/` (not an input, no links out)."""
    out = check_new_file(out, inputs, force, "plan file")
    named = {out: "-o"}
    checked = []
    for option, path in (("--export-mergekit", mergekit), ("--export-freeze", freeze)):
        if path is not None:
            path = check_new_file(path, inputs, force, f"{option} file")
            if path in named:
                raise SpearError(f"{option} {path} is also {named[path]}; give each output its own file.")
            named[path] = option
        checked.append(path)
    if measured:
        cache = check_not_input(out.with_name(out.name + ".probes"), inputs, "planner cache folder")
        if cache.is_dir():
            check_no_outside_links(cache, "planner cache folder")
    return out, checked[0], checked[1]


_PLAN_PARAMS = [p for p in inspect.signature(plan_cmd).parameters.values() if p.kind is not p.VAR_KEYWORD]
with_signature(plan_cmd, [*_PLAN_PARAMS, *parameters(PLANNER_FLAGS)])  # the planner's flags, from PlannerOptions


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze_cmd)
    app.command("plan")(plan_cmd)

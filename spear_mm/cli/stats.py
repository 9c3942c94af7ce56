"""`spear-mm stats`: collect the probe statistics the data-aware merge methods (regmean, fisher) read."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import typer

from spear_mm.cli import checks
from spear_mm.cli.choices import DEVICE_METAVAR
from spear_mm.cli.output import out_console
from spear_mm.cli.progress import LOOKS, Drawer
from spear_mm.errors import SpearError
from spear_mm.io.outputs import human_bytes
from spear_mm.io.pair import open_pair
from spear_mm.io.workdir import WorkDir, pair_owner
from spear_mm.io.writer import parse_size
from spear_mm.measured.planner import general_probe_for
from spear_mm.merging.merge import resolve_device
from spear_mm.statistics.collect import DEFAULT_TOKENS, collect_statistics, load_probes, statistics_key
from spear_mm.statistics.store import read_meta

SAMPLE_TOKENS = 160  # tokens per base sample of the default general probe


def stats_cmd(
    base: Path = typer.Argument(..., help="Base model folder (before CPT) or hub id org/name(@rev)."),
    adapted: Path = typer.Argument(..., help="Adapted model folder (after CPT) or hub id org/name(@rev)."),
    out: Path = typer.Option(..., "--out", "-o", help="Statistics folder (resumed when cut; reused when current)."),
    domain: Path = typer.Option(..., "--domain", help="Held-out domain text (.txt, or .jsonl with a 'text' field)."),
    general: Path | None = typer.Option(
        None, "--general", help="General text (default: texts sampled once from the base, no data needed)."
    ),
    kinds: str = typer.Option("regmean", help="regmean (input Grams), fisher (diagonal Fisher), or both: a,b."),
    tokens: int = typer.Option(DEFAULT_TOKENS, help="Tokens per side (probe size)."),
    device: str = typer.Option("cpu", metavar=DEVICE_METAVAR, help="Where the forward/backward passes run."),
    threads: int | None = typer.Option(None, help="Torch CPU threads (default: torch's)."),
    max_gram_memory: str = typer.Option("2GB", help="Gram memory per pass; more layers take more passes."),
    force: bool = typer.Option(False, help="Replace statistics of another pair or probe in --out."),
) -> None:
    """Collect, per linear layer of the blocks, what it reads on general text (base) and on domain text (adapted)."""
    checks.positive("--threads", threads)
    checks.positive("--tokens", tokens)
    wanted = tuple(k.strip() for k in kinds.split(",") if k.strip())
    if not wanted or set(wanted) - {"regmean", "fisher"}:
        raise SpearError(f"--kinds {kinds!r}: use regmean, fisher or regmean,fisher.")
    resolve_device(device)
    pair = open_pair(base, adapted)
    inputs = [pair.base.path, pair.adapted.path, domain, *([general] if general else [])]
    if threads:
        torch.set_num_threads(threads)
    owner = pair_owner(pair.base.fingerprint(), pair.adapted.fingerprint())
    with WorkDir(out, inputs, owner=owner, force=force, what="statistics folder") as folder:
        if general is None:
            n = math.ceil(tokens / SAMPLE_TOKENS)
            out_console.print(
                f"general probe: {n} texts of {SAMPLE_TOKENS} tokens sampled from the base (cached). Measured: a "
                "base-sample probe restores what text like the samples needs, real general text (--general FILE) "
                "restores what general text needs (docs/data-aware.md, 'Which general probe')."
            )
            general = general_probe_for(pair, folder / "probes", n=n, tokens=SAMPLE_TOKENS)
        probes = load_probes(pair.adapted.path, general, domain, tokens)
        old = read_meta(folder)
        if old is not None and old.key != statistics_key(pair, probes, wanted) and not force:  # type: ignore[arg-type]
            raise SpearError(
                f"{folder} holds statistics of this pair on another probe or kind (key {old.key}); choose another "
                "-o, or pass --force to collect them anew."
            )
        with Drawer(LOOKS, transient=True) as progress:
            meta = collect_statistics(
                pair,
                probes,
                folder,
                kinds=wanted,
                device=device,  # type: ignore[arg-type]
                max_gram_bytes=parse_size(max_gram_memory),
                progress=progress,
            )
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    sides = ", ".join(f"{s} {p.tokens} tokens" for s, p in meta.probes.items())
    timing = ", ".join(f"{s} {v:.1f} s" for s, v in meta.seconds.items()) or "reused"
    out_console.print(f"statistics ({', '.join(meta.kinds)}; {sides}) in {folder}: {human_bytes(size)}; {timing}")
    out_console.print(f"merge with them: spear-mm merge BASE ADAPTED --t 0.5 --method regmean --stats {folder} -o OUT")


def register(app: typer.Typer) -> None:
    app.command("stats")(stats_cmd)

"""The `spear-mm` command line: a thin Typer app. Each stage registers its commands from its own module."""

from __future__ import annotations

import importlib
import logging
import sys

import typer
from rich.console import Console
from rich.logging import RichHandler

from spear_mm import __version__
from spear_mm.errors import SpearError

app = typer.Typer(
    name="spear-mm",
    help="Repair forgetting after domain CPT: score layers, plan restoration, SLERP-merge, validate.",
    epilog="Also: spear-mm plan validate PLAN.yaml MODEL checks a plan against one model, merging nothing. "
    "Models are folders or hub ids org/name or org/name@revision.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)

# Stage modules that add commands to `app` (each defines `register(app)`); missing ones are skipped.
_COMMAND_MODULES = ["merge", "analyze", "evaluate", "train", "run", "demo", "discover"]


def _version(value: bool) -> None:
    if value:
        print(f"spear-mm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging (also accepted after the command)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
        force=True,
    )


for _name in _COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"spear_mm.cli.{_name}")
    except ModuleNotFoundError as exc:  # a stage not built yet
        if exc.name != f"spear_mm.cli.{_name}":
            raise
        continue
    _mod.register(app)


_VERBOSE = ("-v", "--verbose")


def normalise_argv(argv: list[str]) -> list[str]:
    """`-v/--verbose` anywhere (also after the subcommand) becomes the root option; `plan validate` is the
    `plan-validate` command (`plan SCORES` keeps its meaning)."""
    args = list(argv)
    verbose = [a for a in args if a in _VERBOSE]
    args = [a for a in args if a not in _VERBOSE]
    if args[:2] == ["plan", "validate"]:
        args = ["plan-validate", *args[2:]]
    return verbose[:1] + args


def main() -> None:
    """Entry point: run the app, turning SpearError into a one-paragraph message and exit code 2."""
    sys.argv[1:] = normalise_argv(sys.argv[1:])
    try:
        app()
    except SpearError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/] — outputs are written atomically; re-run to resume.")
        sys.exit(130)

"""The `spear-mm` command line: a thin Typer app. Each stage registers its commands from its own module."""

from __future__ import annotations

import importlib
import logging
import signal
import sys
import threading

import typer
from rich.logging import RichHandler

from spear_mm import __version__
from spear_mm.cli.output import console
from spear_mm.errors import SpearError, describe_os_error

# command -> the cli module that registers it, in `--help` order. `spear-mm CMD` imports only CMD's module, so a
# bad option of `run` is refused before torch and transformers load; `--help` and the Python `app` import all.
COMMANDS = {
    "merge": "merge",
    "inspect": "merge",
    "analyze": "analyze",
    "plan": "analyze",
    "stats": "stats",
    "evaluate": "evaluate",
    "report": "evaluate",
    "compare": "compare",
    "cpt": "train",
    "convert-llama2c": "train",
    "run": "run",
    "demo": "demo",
    "ls": "discover",
    "plan-validate": "discover",
}


def _version(value: bool) -> None:
    if value:
        print(f"spear-mm {__version__}")
        raise typer.Exit()


def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging (also accepted after the command)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
        force=True,
    )
    # -v: spear-mm's own debug lines only (not matplotlib's font search or other libraries' internals)
    logging.getLogger("spear_mm").setLevel(logging.DEBUG if verbose else logging.NOTSET)


def build_app(command: str | None = None) -> typer.Typer:
    """The Typer app with every command, or with `command`'s module only (what `spear-mm COMMAND` needs)."""
    app = typer.Typer(
        name="spear-mm",
        help="Repair forgetting after domain CPT: score layers, plan restoration, SLERP-merge, validate.",
        epilog="Also: spear-mm plan validate PLAN.yaml MODEL checks a plan against one model, merging nothing. "
        "Models are folders or hub ids org/name or org/name@revision.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    app.callback()(_root)
    modules = [COMMANDS[command]] if command in COMMANDS else dict.fromkeys(COMMANDS.values())
    for name in modules:  # each stage's commands; an import error is loud
        importlib.import_module(f"{__name__}.{name}").register(app)
    return app


def __getattr__(name: str) -> typer.Typer:
    """`spear_mm.cli.app`: the whole app (tests, documentation tools), built on first use."""
    if name == "app":
        globals()["app"] = built = build_app()
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C: temporary folders are removed, locks released, pool workers killed."""
    raise SystemExit(128 + signum)


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
    """Entry point: run the app, turning SpearError (and OS errors such as a full or read-only disk) into a
    one-paragraph message and exit code 2."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        _run()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run() -> None:
    sys.argv[1:] = normalise_argv(sys.argv[1:])
    command = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    try:
        build_app(command)()
    except SpearError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
    except OSError as exc:
        console.print(f"[bold red]error:[/] {describe_os_error(exc)}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/] — outputs are written atomically; re-run to resume.")
        sys.exit(130)

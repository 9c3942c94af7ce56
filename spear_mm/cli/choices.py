"""The closed sets of values CLI options take, as Enums: Typer validates them and `--help` lists them; the open
ones read from a registry (merge methods, policies: `RegistryOption`); and the lm-eval task options `evaluate`
and `run` share.

Each Enum's values are the library's own names (`executors.KINDS`, ...); a test keeps the two in step. Commands
pass `.value` on to the library.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from typer.models import OptionInfo

from spear_mm.errors import SpearError
from spear_mm.evaluation.lm_eval_tasks import LmEvalTasks
from spear_mm.measured import planner as _measured  # noqa: F401  (registers the `measured` policy)
from spear_mm.merging.methods import METHODS
from spear_mm.planning.policies import POLICY_RULES

DEVICE_METAVAR = "[cpu|cuda|cuda:N]"  # open-ended (any GPU index): listed in --help, checked by resolve_device


class Executor(str, Enum):
    local = "local"
    process = "process"
    ray = "ray"


class Backend(str, Enum):
    builtin = "builtin"
    lm_eval = "lm-eval"


class RankBy(str, Enum):
    score = "score"
    restore_gain = "restore_gain"
    activation_drift = "activation_drift"


class Aggregate(str, Enum):
    mean = "mean"
    max = "max"


class Normalize(str, Enum):
    robust_z = "robust_z"
    rank = "rank"


class Edge(str, Enum):
    mp = "mp"
    spectrum = "spectrum"


class Precision(str, Enum):
    auto = "auto"
    float32 = "float32"
    float64 = "float64"


class SnrNormalize(str, Enum):
    max = "max"


class Listing(str, Enum):
    """What `spear-mm ls` lists."""

    suites = "suites"
    tasks = "tasks"
    policies = "policies"
    methods = "methods"
    refinements = "refinements"
    architectures = "architectures"


class RegistryOption(OptionInfo):
    """A Typer option taking one name from a registry that is read when the command line is parsed and when
    `--help` is drawn (every run), so a merge method or policy registered after import (a plugin module) is
    listed and accepted like a built-in."""

    def __init__(self, default: str | None, names: Callable[[], Iterable[str]], what: str, listing: str, **kw: Any):
        self.names, self.what, self.listing = names, what, listing
        super().__init__(default=default, parser=self.parse, **kw)

    @property
    def metavar(self) -> str:  # type: ignore[override]
        return "[" + "|".join(self.names()) + "]"

    @metavar.setter
    def metavar(self, _value: object) -> None:  # OptionInfo sets it; the registry decides
        pass

    def parse(self, value: str) -> str:
        if value not in self.names():
            raise typer.BadParameter(
                f"{value!r} is not a registered {self.what}: use one of {', '.join(self.names())} "
                f"(spear-mm ls {self.listing})."
            )
        return value


def method_option(default: str | None, help: str) -> Any:
    """`--method`: a registered merge method (merging/methods/)."""
    return RegistryOption(
        default, lambda: list(METHODS), "merge method", "methods", param_decls=("--method",), help=help
    )


def policy_option(default: str, help: str) -> Any:
    """`--policy`: a registered policy (planning/policies.py, and `measured` from measured/)."""
    return RegistryOption(
        default, lambda: list(POLICY_RULES), "policy", "policies", param_decls=("--policy",), help=help
    )


# Options shared by `evaluate` and `run` (Typer reads them from each signature; one declaration serves both).
BACKEND_OPTION: Any = typer.Option(Backend.builtin, "--backend", help="Who scores the suites' items.")
SUITE_OPTION: Any = typer.Option(
    None, "--suite", "-s", help="general, domain, demo or a suite .yaml (default general,domain; none with --tasks)."
)
TASKS_OPTION: Any = typer.Option(None, "--tasks", help="lm-eval registered tasks, e.g. arc_easy,hellaswag (in R).")
GENERAL_TASKS_OPTION: Any = typer.Option(None, "--general-tasks", help="lm-eval tasks that count in R.")
DOMAIN_TASKS_OPTION: Any = typer.Option(None, "--domain-tasks", help="lm-eval tasks that count in K.")
LM_EVAL_INCLUDE_OPTION: Any = typer.Option(
    None, "--lm-eval-include", help="Folder of extra lm-eval task YAMLs (lm-eval's --include_path)."
)


def registered_tasks(tasks: str | None, general: str | None, domain: str | None, include: Path | None) -> Any:
    """The `LmEvalTasks` named by the options (None: no names); `--lm-eval-include` alone is an error."""
    registered = LmEvalTasks.from_options(tasks, general, domain, include)
    if registered is None and include is not None:
        raise SpearError("--lm-eval-include needs --tasks, --general-tasks or --domain-tasks (the task names).")
    return registered


def lm_eval_selection(
    suite: str | None,
    backend: Backend,
    tasks: str | None,
    general: str | None,
    domain: str | None,
    include: Path | None,
) -> tuple[str, str, Any]:
    """(suite, backend, LmEvalTasks or None) from the options: task names imply `--backend lm-eval` and, without
    `--suite`, no suite; `--lm-eval-include` alone is an error."""

    registered = registered_tasks(tasks, general, domain, include)
    if suite is None:
        suite = "" if registered is not None else "general,domain"
    return suite, Backend.lm_eval.value if registered is not None else backend.value, registered


def value(choice: Enum | str | None) -> str | None:
    """The plain string of a choice (Typer hands commands the Enum member)."""
    return choice.value if isinstance(choice, Enum) else choice

"""The closed sets of values CLI options take, as Enums: Typer validates them and `--help` lists them; and the
lm-eval task options `evaluate` and `run` share.

Each Enum's values are the library's own names (`executors.KINDS`, `policies.POLICIES`, ...); a test keeps
the two in step. Commands pass `.value` on to the library.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

import typer

from spear_mm.errors import SpearError
from spear_mm.evaluation.lm_eval_tasks import LmEvalTasks

DEVICE_METAVAR = "[cpu|cuda|cuda:N]"  # open-ended (any GPU index): listed in --help, checked by resolve_device


class Executor(str, Enum):
    local = "local"
    process = "process"
    ray = "ray"


class Backend(str, Enum):
    builtin = "builtin"
    lm_eval = "lm-eval"


class Policy(str, Enum):
    conservative = "conservative"
    balanced = "balanced"
    aggressive = "aggressive"
    uniform = "uniform"
    custom = "custom"
    top_k = "top-k"
    fraction = "fraction"
    measured = "measured"


class RankBy(str, Enum):
    score = "score"
    restore_gain = "restore_gain"
    activation_drift = "activation_drift"


class Method(str, Enum):
    slerp = "slerp"
    lerp = "lerp"
    task_arithmetic = "task_arithmetic"
    ties = "ties"
    regmean = "regmean"
    fisher = "fisher"


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
    architectures = "architectures"


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

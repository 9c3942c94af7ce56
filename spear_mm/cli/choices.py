"""The closed sets of values CLI options take, as Enums: Typer validates them and `--help` lists them.

Each Enum's values are the library's own names (`executors.KINDS`, `policies.POLICIES`, ...); a test keeps
the two in step. Commands pass `.value` on to the library.
"""

from __future__ import annotations

from enum import Enum

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


class Method(str, Enum):
    slerp = "slerp"
    lerp = "lerp"
    task_arithmetic = "task_arithmetic"
    ties = "ties"


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


class ChooseFrom(str, Enum):
    all = "all"
    plans = "plans"


class Listing(str, Enum):
    """What `spear-mm ls` lists."""

    suites = "suites"
    tasks = "tasks"
    policies = "policies"
    methods = "methods"
    architectures = "architectures"


def value(choice: Enum | str | None) -> str | None:
    """The plain string of a choice (Typer hands commands the Enum member)."""
    return choice.value if isinstance(choice, Enum) else choice

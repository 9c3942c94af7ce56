"""Progress as typed events: the library reports `ProgressEvent`s to one callback; only `cli/` draws them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Stage = Literal["analyze", "cpt", "evaluate", "items", "merge", "planner", "stats"]


@dataclass(frozen=True)
class ProgressEvent:
    """`done` of `total` units of one stage. `items` events carry the label `<model> · <task>`."""

    stage: Stage
    done: int
    total: int
    label: str = ""


ProgressCallback = Callable[[ProgressEvent], None]

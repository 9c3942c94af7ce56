"""Progress as typed events: the library reports `ProgressEvent`s to one callback; only `cli/` draws them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Stage = Literal["analyze", "cpt", "evaluate", "items", "merge", "planner", "stats"]
Unit = Literal["", "bytes"]


@dataclass(frozen=True)
class ProgressEvent:
    """`done` of `total` units of one stage (`unit` "bytes": sizes, e.g. a merge's bytes written).

    `label` names what moved: the tensor scored or written, `<model> · <task>` for `items`, the probe side of
    `stats`. Stages: analyze (tensors scored), merge (bytes written), items (one model's task), evaluate
    (models of a run), planner (probe evaluations), stats (Gram groups of a side), cpt (optimizer steps)."""

    stage: Stage
    done: int
    total: int
    label: str = ""
    unit: Unit = ""


ProgressCallback = Callable[[ProgressEvent], None]

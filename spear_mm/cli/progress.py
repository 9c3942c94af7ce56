"""Progress on the command line: the one drawer of the library's `ProgressEvent`s. Rich bars on a terminal;
without one (`… > run.log`, CI, nohup, a batch job) plain lines, one per finished unit of work (stages drawn
`per_unit`) or every 30 s otherwise, and one when a step (or a sub-step: one model's task) finishes:

    evaluate models: 5/16 (31%), elapsed 0:00:42, ETA 0:01:32

`Drawer(looks)` is the `ProgressCallback` every command passes to the library; `looks` says how each stage is
drawn (`RUN`: the stages of `run` and `demo`). `bars(...)` picks rich or `PlainProgress`; both take the same
calls (`add_task`, `update`, `advance`, `start`, `stop`, and `with`). Task fields: `per_unit` (a line per unit
done), `detail` (a bar reused for one sub-step after another: its clock restarts with each new description),
`unit="bytes"` (counts shown in MB)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from spear_mm.cli.output import console as stderr_console
from spear_mm.progress import ProgressEvent

INTERVAL = 30.0


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0
    last_line: float = 0.0
    finished: bool = False


class PlainProgress:
    """The rich `Progress` calls the CLI makes, written as plain lines to `console` (no cursor movement)."""

    def __init__(self, console: Console, interval: float = INTERVAL, clock: Callable[[], float] = time.monotonic):
        self.console, self.interval, self.clock = console, interval, clock
        self.tasks: dict[int, _Task] = {}

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Nothing to draw until a unit finishes."""

    def stop(self) -> None:
        """Nothing to clear: every line is final."""

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: Any) -> int:
        now = self.clock()
        task_id = len(self.tasks)
        self.tasks[task_id] = _Task(description, total, completed, fields, started=now, last_line=now)
        return task_id

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(
        self,
        task_id: int,
        *,
        completed: float | None = None,
        total: float | None = None,
        advance: float | None = None,
        description: str | None = None,
        **fields: Any,
    ) -> None:
        task = self.tasks[task_id]
        before = task.completed
        if description is not None and description != task.description:
            task.description = description
            if task.fields.get("detail"):  # a sub-step reused under a new name (the run's per-task bar)
                task.finished, task.started = False, self.clock()
        task.total = total if total is not None else task.total
        task.completed = completed if completed is not None else task.completed + (advance or 0)
        task.fields.update(fields)
        if task.completed <= before and completed is None and advance is None:
            return
        now = self.clock()
        done = task.total is not None and task.completed >= task.total
        if done and task.finished and task.completed <= before:
            return
        due = now - task.last_line >= self.interval
        if due or done or (task.fields.get("per_unit") and task.completed > before):
            task.last_line, task.finished = now, done
            self.console.print(self.line(task, now), markup=False, highlight=False, soft_wrap=True)

    def line(self, task: _Task, now: float) -> str:
        """`step: done/total (pct), elapsed H:MM:SS, ETA H:MM:SS` (ETA once something is done)."""
        elapsed = now - task.started
        scale, suffix = (1e6, " MB") if task.fields.get("unit") == "bytes" else (1, "")
        digits = 1 if scale > 1 and (task.total or task.completed) < 100e6 else 0  # 0.7/1.5 MB, 269/538 MB

        def num(x: float) -> str:
            return f"{x / scale:.{digits}f}" if scale > 1 else f"{x:g}"

        text = f"{task.description.strip()}: {num(task.completed)}"
        if task.total:
            total = num(task.total)
            text += f"/{total}{suffix} ({100 * task.completed / task.total:.0f}%)"
            eta = elapsed / task.completed * (task.total - task.completed) if task.completed else None
        else:
            text, eta = text + suffix, None
        text += f", elapsed {_clock(elapsed)}"
        return text + (f", ETA {_clock(eta)}" if eta is not None and task.completed < (task.total or 0) else "")


def bars(*columns: Any, console: Console, transient: bool = False) -> Progress | PlainProgress:
    """Rich bars when `console` is a terminal, plain progress lines otherwise."""
    if console.is_terminal:
        return Progress(*columns, console=console, transient=transient)
    return PlainProgress(console)


@dataclass(frozen=True)
class Look:
    """How the events of one stage are drawn."""

    title: str = ""  # the bar's text (default: the stage's name)
    text: str = ""  # with a label: the bar's text, e.g. "stats {label}" (default: the title; the label dim beside it)
    per_label: bool = False  # a bar per label (evaluate: one per model · task), not one bar relabelled
    per_unit: bool = False  # without a terminal: a line per unit done, not every 30 s


# the stages of `run` and `demo`; without a terminal a line per model evaluated, per probe evaluation, per
# statistics group and per model's task, counts within every 30 s
LOOKS = {
    "analyze": Look("score tensors"),
    "cpt": Look("cpt: optimizer steps"),
    "evaluate": Look("evaluate models", per_unit=True),
    "items": Look(text="  {label}"),
    "merge": Look("write chosen model (bytes)"),
    "planner": Look("measured planner: probe evaluations", per_unit=True),
    "stats": Look("stats", text="stats {label}", per_unit=True),
}


class _Count(ProgressColumn):
    """`done/total`, or sizes for a task counted in bytes (`269.0/538.0 MB`)."""

    def __init__(self) -> None:
        super().__init__()
        self._count, self._bytes = MofNCompleteColumn(), DownloadColumn()

    def render(self, task: Task) -> Text:
        return (self._bytes if task.fields.get("unit") == "bytes" else self._count).render(task)


def _columns() -> tuple[ProgressColumn, ...]:
    return (
        TextColumn("{task.description}"),
        BarColumn(),
        _Count(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[label]}", style="dim"),
    )


class Drawer:
    """The `ProgressCallback` of a command: each stage's events drawn as `looks` say (unknown stages by their
    name) on `console`; the bars start at the first event, so output before it (a CPT's, a download's) stays.
    Without a terminal, transformers' own progress bars are switched off: the log gets this drawer's lines only."""

    def __init__(self, looks: dict[str, Look], *, console: Console = stderr_console, transient: bool = False):
        self.looks, self.console, self.transient = looks, console, transient
        if not console.is_terminal:  # transformers' tqdm bars ("Loading weights") would write \r-lines to the log
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        self.bars: Progress | PlainProgress | None = None
        self.ids: dict[tuple[str, str], int] = {}

    def __enter__(self) -> Drawer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bars is not None:
            self.bars.stop()

    def __call__(self, event: ProgressEvent) -> None:
        if self.bars is None:
            self.bars = bars(*_columns(), console=self.console, transient=self.transient)
            self.bars.start()
        look = self.looks.get(event.stage) or Look(event.stage)
        text = look.text.format(label=event.label) if look.text and event.label else look.title or event.stage
        key = (event.stage, event.label if look.per_label else "")
        if key not in self.ids:
            relabelled = bool(look.text) and not look.per_label  # one bar, one sub-step after another
            fields = dict(per_unit=look.per_unit, detail=relabelled, unit=event.unit, label="")
            self.ids[key] = self.bars.add_task(text, total=event.total, **fields)
        beside = "" if look.text else event.label[-48:]  # a tensor's name: shown on a terminal only
        self.bars.update(self.ids[key], completed=event.done, total=event.total, description=text, label=beside)

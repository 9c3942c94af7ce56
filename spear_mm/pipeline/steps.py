"""Resumable steps: each step's output has a sidecar `<output name>.step` (JSON) holding the content hash of the
step's inputs, its wall time and device. A re-run skips a step whose sidecar key matches and whose outputs
exist; every event (ran / skipped) is appended to `RUN/run_log.jsonl`.

Outputs are written atomically (temporary file, then rename) and the sidecar is written after the output, so
an interrupted step is simply run again. `Steps.cached` is the whole pattern for one step: key → reuse or
compute → record.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

from spear_mm.io.files import atomic_write_text, open_append


class StepRecord(BaseModel):
    """What the sidecar of one finished step says."""

    step: str
    key: str
    seconds: float
    device: str = "cpu"
    finished: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    extra: dict[str, Any] = Field(default_factory=dict)


T = TypeVar("T")


@dataclass(frozen=True)
class Cached(Generic[T]):
    """A step's output: its value, the seconds the step cost when it ran, whether this run reused it, its record."""

    value: T
    seconds: float
    skipped: bool
    record: StepRecord


def sidecar(output: Path) -> Path:
    """`scores/` -> `scores.step`, `eval/base.json` -> `eval/base.json.step` (never matched by `*.json`)."""
    return output.with_name(output.name + ".step")


class Steps:
    """The step bookkeeping of one run folder."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.log_path = run_dir / "run_log.jsonl"
        self.events: list[dict[str, Any]] = []

    def finished(self, output: Path, key: str, *also: Path) -> StepRecord | None:
        """The record of `output` when it was produced from inputs with this `key` and it (and `also`) exist."""
        car = sidecar(output)
        if not (car.is_file() and output.exists() and all(p.exists() for p in also)):
            return None
        try:
            record = StepRecord.model_validate_json(car.read_text(encoding="utf-8"))
        except ValueError:
            return None
        return record if record.key == key else None

    def reuse(self, step: str, output: Path, key: str, *also: Path) -> StepRecord | None:
        """`finished(...)`, logging the skip when the output is reused."""
        record = self.finished(output, key, *also)
        if record is not None:
            self.skipped(step, record)
        return record

    def record(
        self, output: Path, step: str, key: str, seconds: float, device: str = "cpu", **extra: Any
    ) -> StepRecord:
        rec = StepRecord(step=step, key=key, seconds=round(seconds, 4), device=device, extra=extra)
        atomic_write_text(sidecar(output), rec.model_dump_json(indent=1))
        self.event(step, "ran", seconds, key=key)
        return rec

    def cached(
        self,
        step: str,
        output: Path,
        key: str,
        compute: Callable[[], T],
        load: Callable[[StepRecord], T],
        *,
        also: Sequence[Path] = (),
        device: str = "cpu",
        extra: Callable[[T], dict[str, Any]] | None = None,
    ) -> Cached[T]:
        """One resumable step: `load(record)` when `output` (and `also`) exist and were made from inputs with this
        `key`; else `compute()` (which writes `output`), then the sidecar with its wall time and `extra(value)`.
        A `compute` that raises records nothing, so the step runs again next time."""
        record = self.reuse(step, output, key, *also)
        if record is not None:
            return Cached(load(record), record.seconds, True, record)
        started = time.perf_counter()
        value = compute()
        seconds = round(time.perf_counter() - started, 4)
        record = self.record(output, step, key, seconds, device, **(extra(value) if extra else {}))
        return Cached(value, seconds, False, record)

    def event(self, step: str, status: str, seconds: float = 0.0, **extra: Any) -> None:
        """Append one line to run_log.jsonl (flushed at once, so a killed run leaves a truthful log)."""
        entry = {
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "step": step,
            "status": status,
            "seconds": round(seconds, 4),
            **extra,
        }
        self.events.append(entry)
        with open_append(self.log_path) as f:  # never through a link or a hard link
            f.write(json.dumps(entry) + "\n")

    def skipped(self, step: str, record: StepRecord) -> None:
        self.event(step, "skipped", record.seconds, key=record.key)

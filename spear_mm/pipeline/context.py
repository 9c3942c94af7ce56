"""`RunContext`: what the stages of one `spear-mm run` share, passed instead of long argument lists."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spear_mm.io.pair import Pair
from spear_mm.pipeline.config import RunConfig
from spear_mm.pipeline.steps import Steps
from spear_mm.progress import ProgressCallback, ProgressEvent


@dataclass
class RunContext:
    """What every stage of one run shares: the config, the open pair, the run folder and its step records."""

    config: RunConfig
    pair: Pair
    run_dir: Path
    steps: Steps
    fp_b: str
    fp_a: str
    progress: ProgressCallback | None = None

    def report(self, stage: str, done: int, total: int, label: str = "") -> None:
        if self.progress is not None:
            self.progress(ProgressEvent(stage, done, total, label))

"""`RunContext`: what the stages of one `spear-mm run` share, passed instead of long argument lists."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spear_mm.evaluation.lm_eval_tasks import LmEvalTasks
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

    @property
    def lm_eval_tasks(self) -> LmEvalTasks | None:
        """lm-eval's registered tasks named by the config (None: only the suites run)."""
        c = self.config
        if not (c.general_tasks or c.domain_tasks):
            return None
        return LmEvalTasks(tuple(c.general_tasks), tuple(c.domain_tasks), c.lm_eval_include)

    def report(self, stage: str, done: int, total: int, label: str = "") -> None:
        if self.progress is not None:
            self.progress(ProgressEvent(stage, done, total, label))

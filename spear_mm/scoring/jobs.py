"""Where tensors are scored: a thread pool in process (`local`), or work items for an executor (process pool,
Ray); and a journal of partial rows for resuming.

A work item is a `ScoreBatch`: the two checkpoint paths, a few tensor names and the `ScoreConfig` — a few
hundred bytes. Each worker opens the checkpoints itself (shared storage) and reads only its tensors, so no
tensor crosses the driver and memory per worker is one tensor pair at a time.

`ScoreJournal` appends each arriving row to `partial_scores.jsonl` in the output folder; a run restarted on
the same pair and config skips the rows already there. It is removed once the full table is saved.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from spear_mm.errors import SpearError
from spear_mm.executors import make_executor
from spear_mm.io.files import open_fresh
from spear_mm.io.pair import Pair
from spear_mm.scoring.table import ModuleScore, ScoreConfig
from spear_mm.scoring.tensor_task import score_names

log = logging.getLogger(__name__)

PARTIAL = "partial_scores.jsonl"
BATCHES_PER_WORKER = 8  # enough for load balance and a live progress bar; each costs ~ms of task overhead


@dataclass(frozen=True)
class ScoreBatch:
    """One work item: score `names` of the pair at `base`/`adapted` with `config`, on `threads` torch threads."""

    base: str
    adapted: str
    names: tuple[str, ...]
    config: ScoreConfig
    threads: int | None = None


def score_batch(batch: ScoreBatch) -> list[ModuleScore]:
    """Run one batch in a worker: open both checkpoints (cached per process) and score the named tensors."""

    if batch.threads:
        torch.set_num_threads(batch.threads)
    return score_names(batch.base, batch.adapted, batch.names, batch.config)


@contextmanager
def _thread_budget(workers: int):
    """Give each worker thread an equal share of torch's intra-op threads (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(workers, 1)) if workers > 1 else before)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def score_on_threads(
    pair: Pair, names: list[str], config: ScoreConfig, workers: int, arrived: Callable[[list[ModuleScore]], None]
) -> int:
    """The in-process path (`local`): a bounded thread pool (at most two pairs per worker in memory)."""
    if config.device != "cpu":
        workers = 1

    base, adapted = str(pair.base.path), str(pair.adapted.path)
    with (
        _thread_budget(workers) as threads,
        # each pool thread sets its own budget: a new thread would otherwise run MKL with the process default
        ThreadPoolExecutor(
            workers, thread_name_prefix="spear-score", initializer=torch.set_num_threads, initargs=(threads,)
        ) as pool,
    ):
        pending, queue = set(), iter(names)
        for _ in range(2 * workers):
            name = next(queue, None)
            if name is not None:
                pending.add(pool.submit(score_names, base, adapted, [name], config))
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                arrived(fut.result())
                name = next(queue, None)
                if name is not None:
                    pending.add(pool.submit(score_names, base, adapted, [name], config))
    return threads


def tensor_cost(pair: Pair, name: str) -> float:
    """Relative cost of scoring one tensor: m·n·min(m, n) for a layer matrix (Gram + eigvalsh), else numel."""
    info, param = pair.adapted.infos[name], pair.params[name]
    if param.group == "layer" and len(info.shape) >= 2:
        return float(info.numel) * min(info.shape)
    return float(info.numel)


def make_batches(names: Sequence[str], costs: Sequence[float], n_batches: int) -> list[tuple[str, ...]]:
    """Split `names` (in the given order, ideally costliest first) into runs of about equal total cost.

    A tensor costlier than the share stays alone; the many cheap ones (norms, small matrices) are grouped.
    """
    if not names:
        return []
    share = sum(costs) / max(1, n_batches)
    batches: list[tuple[str, ...]] = []
    current: list[str] = []
    acc = 0.0
    for name, cost in zip(names, costs, strict=True):
        current.append(name)
        acc += cost
        if acc >= share:
            batches.append(tuple(current))
            current, acc = [], 0.0
    if current:
        batches.append(tuple(current))
    return batches


def score_on_executor(
    pair: Pair,
    names: Sequence[str],
    config: ScoreConfig,
    *,
    executor: str,
    workers: int | None,
    ray_address: str | None = None,
    on_rows: Callable[[list[ModuleScore]], None] | None = None,
) -> tuple[list[ModuleScore], int, int]:
    """Score `names` (costliest first) in batches on a `process` or `ray` executor; (rows, threads, workers)."""
    cpu = config.device == "cpu"
    num_gpus = 0.0 if cpu else None  # Ray: a GPU per task when scoring on cuda (and the cluster has GPUs)
    with make_executor(executor, workers=workers, ray_address=ray_address, num_gpus=num_gpus) as ex:
        n_workers = int(getattr(ex, "workers", workers or 1))
        # process: the cores shared between the pool; ray: each task holds one CPU
        threads = max(1, (os.cpu_count() or 1) // n_workers) if executor == "process" else 1
        costs = {n: tensor_cost(pair, n) for n in names}
        names = sorted(names, key=lambda n: -costs[n])  # costliest first: the big ones start early, alone
        groups = make_batches(names, [costs[n] for n in names], BATCHES_PER_WORKER * n_workers)
        items = [ScoreBatch(str(pair.base.path), str(pair.adapted.path), g, config, threads) for g in groups]
        labels = [g[0] if len(g) == 1 else f"{g[0]} (+{len(g) - 1} more tensors)" for g in groups]
        batches = ex.map(score_batch, items, labels=labels, on_result=lambda _, rows: on_rows and on_rows(rows))
    return [r for rows in batches for r in rows], threads, n_workers


class ScoreJournal:
    """Rows scored so far, one JSON line each after a header naming the pair and config."""

    def __init__(self, out_dir: str | Path, header: dict) -> None:
        self.path = Path(out_dir) / PARTIAL
        self.header = header
        self._file = None

    def resume(self) -> dict[str, ModuleScore]:
        """Rows of an interrupted run on the same pair and config (else none), then open for appending."""
        rows: dict[str, ModuleScore] = {}
        if self.path.is_symlink() or self.path.exists():
            lines = _journal_lines(self.path)
            if lines and _loads(lines[0]) == self.header:
                for line in lines[1:]:
                    try:
                        row = ModuleScore.model_validate_json(line)
                    except ValueError:  # a line cut short by the interruption
                        continue
                    rows[row.name] = row
                log.info("resuming: %d tensors already scored in %s", len(rows), self.path)
        self._file = open_fresh(self.path)  # a new file: never written through a link or over another name
        self._file.write(json.dumps(self.header) + "\n")
        self.append(list(rows.values()))
        return rows

    def append(self, rows: list[ModuleScore]) -> None:
        if self._file is None:
            return
        for row in rows:
            self._file.write(row.model_dump_json() + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def finish(self) -> None:
        """Close and remove the journal (the full table is saved)."""
        self.close()
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _journal_lines(path: Path) -> list[str]:
    """The journal's lines; a link or undecodable bytes are a clear error naming it (never a traceback)."""
    if path.is_symlink() or not path.is_file():
        raise SpearError(f"{path}: the scoring journal is not a plain file (a link or a folder). Remove it and re-run.")
    try:
        return path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise SpearError(
            f"{path}: the scoring journal is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start}), so spear-mm did not write it. Remove it (scoring then starts over) and re-run."
        ) from None


def _loads(line: str) -> dict | None:
    try:
        return json.loads(line)
    except ValueError:
        return None

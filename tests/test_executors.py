"""Executors (local / process pool / a real local Ray instance) and scoring on them, on the tiny pair."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from spear_mm.errors import SpearError
from spear_mm.executors import _check_reachable, make_executor
from spear_mm.io.pair import open_pair
from spear_mm.progress import ProgressEvent
from spear_mm.scoring.jobs import PARTIAL, make_batches
from spear_mm.scoring.layers import ScoreConfig, analyze, layer_scores, normalize_rows, score_names

TESTS = str(Path(__file__).parent)


# -- work functions (top level: pickled by reference, imported by the workers) -------------------------------------
def square(x: int) -> int:
    return x * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three is not allowed")
    return x


def die_once(marker: str) -> int:
    """Kill the worker process the first time (no exception, no cleanup), succeed when retried."""
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        os._exit(1)
    return int(path.read_text())  # the pid of the worker that died


def die_always(_: int) -> int:
    os._exit(1)


@pytest.fixture(scope="module")
def ray_session():
    """One real local Ray instance (2 CPUs) for this module; the test folder is importable by its workers."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'spear-mm[ray]'")
    started = not ray.is_initialized()
    if started:
        path = os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH")) if p)
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": path}},
        )
    yield ray
    if started:
        ray.shutdown()


def assert_same_scores(ref, table) -> None:
    """Bit-identical rows and layer scores (timings aside)."""
    assert table.ranking() == ref.ranking()
    for x, y in [*zip(ref.modules, table.modules, strict=True), *zip(ref.layers, table.layers, strict=True)]:
        assert x.model_dump(exclude={"seconds"}) == y.model_dump(exclude={"seconds"})


@pytest.fixture(scope="module")
def reference(tiny_pair):
    """The rows computed here, in the main thread (1 torch thread, as every executor worker has)."""
    config = ScoreConfig()
    pair = open_pair(*tiny_pair)
    rows = normalize_rows(score_names(*tiny_pair, pair.names, config), config)
    layers = layer_scores(rows, pair.num_layers, config)
    ranking = [s.layer for s in sorted(layers, key=lambda s: s.rank)]
    return SimpleNamespace(modules=rows, layers=layers, ranking=lambda: ranking)


@pytest.fixture(scope="module")
def local_table(tiny_pair):
    """The default local path: a thread pool, each thread on one torch thread like every executor worker."""
    return analyze(*tiny_pair, workers=2)


# -- local and process pool ----------------------------------------------------------------------------------------
def test_local_map_keeps_order_reports_each_result_and_names_the_failing_item():
    seen = []
    with make_executor("local") as ex:
        assert ex.kind == "local"
        assert ex.map(square, [3, 1, 2], on_result=lambda i, r: seen.append((i, r))) == [9, 1, 4]
        assert seen == [(0, 9), (1, 1), (2, 4)]
        with pytest.raises(SpearError, match="'tensor-3' failed: three is not allowed"):
            ex.map(fail_on_three, [1, 2, 3], labels=["tensor-1", "tensor-2", "tensor-3"])
        with pytest.raises(SpearError, match="one label per item"):
            ex.map(square, [1, 2], labels=["a"])
    with pytest.raises(SpearError, match="unknown executor 'threads'"):
        make_executor("threads")


def test_process_pool_scores_are_identical(tiny_pair, reference, local_table):
    table = analyze(*tiny_pair, workers=2, executor="process")
    assert table.timing.workers == 2
    assert_same_scores(reference, table)
    assert_same_scores(local_table, table)


@pytest.mark.slow  # worker processes die and are replaced (~10 s on 2 cores)
def test_process_pool_writes_results_as_they_arrive_and_retries_a_dead_worker(tmp_path):
    partial = tmp_path / "partial.txt"

    def write(i: int, r: int) -> None:  # the driver appends each result as it arrives
        with partial.open("a") as f:
            f.write(f"{i} {r}\n")

    with make_executor("process", workers=2, max_retries=1) as ex:
        assert ex.kind == "process"
        assert ex.map(square, list(range(7)), on_result=write) == [x * x for x in range(7)]
        assert sorted(partial.read_text().splitlines()) == sorted(f"{i} {i * i}" for i in range(7))
        with pytest.raises(SpearError, match="'t3' failed: three is not allowed"):
            ex.map(fail_on_three, [1, 3], labels=["t1", "t3"])
        assert ex.map(die_once, [str(tmp_path / "m0")]) == [int((tmp_path / "m0").read_text())]
    died = pytest.raises(SpearError, match="'only-item' failed: its worker process died 1 times")
    with make_executor("process", workers=1, max_retries=0) as ex, died:
        ex.map(die_always, [0], labels=["only-item"])


# -- Ray -----------------------------------------------------------------------------------------------------------
@pytest.mark.slow  # Ray start-up and worker imports: ~10-30 s on 2 cores
def test_ray_scores_match_local(ray_session, tiny_pair, reference, local_table, tmp_path):
    table = analyze(*tiny_pair, tmp_path / "scores", workers=2, executor="ray")
    assert table.timing.workers == 2
    assert_same_scores(reference, table)
    assert_same_scores(local_table, table)
    assert not (tmp_path / "scores" / PARTIAL).exists()  # the journal is gone once the table is saved


def test_ray_task_killed_once_is_retried_and_failures_name_their_item(ray_session, tmp_path):
    seen: list[tuple[int, int]] = []
    with make_executor("ray", workers=2, max_retries=2) as ex:
        assert ex.kind == "ray" and ex.num_gpus == 0  # no GPU here: tasks ask for none
        markers = [str(tmp_path / f"m{i}") for i in range(2)]
        pids = ex.map(die_once, markers, on_result=lambda i, r: seen.append((i, r)))
        assert pids == [int(Path(m).read_text()) for m in markers]  # each item's first worker died, then it ran
        assert sorted(i for i, _ in seen) == [0, 1]
        with pytest.raises(SpearError, match="'t3' failed: three is not allowed"):
            ex.map(fail_on_three, [1, 2, 3], labels=["t1", "t2", "t3"])
    with make_executor("ray", workers=1, max_retries=0) as ex, pytest.raises(SpearError, match="'doomed' failed"):
        ex.map(die_always, [0], labels=["doomed"])


def test_ray_missing_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(SpearError, match=r"pip install 'spear-mm\[ray\]'"):
        make_executor("ray")


def test_importing_executors_and_scoring_does_not_import_ray():
    code = "import sys, spear_mm.executors, spear_mm.scoring.layers, spear_mm.scoring.jobs; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unreachable_ray_head_fails_fast():
    with pytest.raises(SpearError, match="no Ray head node answers at 127.0.0.1:1"):
        _check_reachable("127.0.0.1:1")
    with pytest.raises(SpearError, match="give 'auto' or HOST:PORT"):
        _check_reachable("headnode")


# -- batching and resume -------------------------------------------------------------------------------------------
def test_batches_keep_order_cover_every_name_and_leave_costly_tensors_alone():
    names = [f"t{i}" for i in range(10)]
    costs = [100.0, 50.0] + [1.0] * 8
    batches = make_batches(names, costs, 4)
    assert [n for b in batches for n in b] == names
    assert batches[0] == ("t0",) and batches[1] == ("t1",)
    assert len(batches) <= 4
    assert make_batches([], [], 3) == []


def test_interrupted_analyze_resumes_from_the_journal(tiny_pair, reference, tmp_path):
    out = tmp_path / "scores"

    class Stop(Exception):
        pass

    def stop_after_10(event: ProgressEvent) -> None:
        if event.done == 10:
            raise Stop

    with pytest.raises(Stop):
        analyze(*tiny_pair, out, executor="local", workers=1, progress=stop_after_10)
    journal = (out / PARTIAL).read_text().splitlines()
    assert len(journal) == 1 + 10  # header + the rows that arrived before the interruption
    fresh: list[str] = []
    table = analyze(*tiny_pair, out, executor="process", workers=2, progress=lambda e: fresh.append(e.label))
    assert len(fresh) == len(table.modules) - 10  # only the rest was scored again
    assert_same_scores(reference, table)
    assert not (out / PARTIAL).exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_keep_freed_memory_applies_on_glibc_and_can_be_switched_off():
    code = "from spear_mm.executors import keep_freed_memory; print(keep_freed_memory())"

    def run(env: dict[str, str]) -> str:
        done = subprocess.run([sys.executable, "-c", code], env=os.environ | env, capture_output=True, text=True)
        return done.stdout.strip()

    glibc = "glibc" in (os.confstr("CS_GNU_LIBC_VERSION") or "")
    assert run({}) == str(glibc)
    assert run({"SPEAR_MM_MALLOC": "default"}) == "False"

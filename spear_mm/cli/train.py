"""`spear-mm cpt` (continual pre-training, optionally with frozen layers) and `spear-mm convert-llama2c`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from spear_mm.cli import checks
from spear_mm.cli.output import out_console
from spear_mm.cli.progress import LOOKS, Drawer
from spear_mm.errors import SpearError
from spear_mm.io.llama2c import convert_llama2c
from spear_mm.training.cpt import CptConfig, cpt


def cpt_cmd(
    base: Path = typer.Argument(..., help="Base model folder (Hugging Face format) or hub id org/name(@rev)."),
    more_corpus: list[Path] | None = typer.Argument(
        None, help="More corpus files (may follow --corpus).", show_default=False
    ),
    corpus: list[Path] | None = typer.Option(
        None, "--corpus", help="Corpus file: .txt (blank-line separated) or .jsonl[.gz]; repeatable."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output model folder (written atomically)."),
    text_field: str = typer.Option("text", help="JSONL field holding the document text."),
    seq_len: int = typer.Option(256, help="Tokens per packed training block."),
    max_steps: int = typer.Option(100, help="Optimizer steps."),
    lr: float = typer.Option(5e-5, help="Peak learning rate."),
    scheduler: str = typer.Option("cosine", help="cosine, linear, constant, constant_with_warmup, ..."),
    warmup_steps: int = typer.Option(0, help="Linear warm-up steps."),
    batch_size: int = typer.Option(4, help="Blocks per micro-batch."),
    grad_accum: int = typer.Option(1, help="Micro-batches per optimizer step."),
    weight_decay: float = typer.Option(0.0, help="AdamW weight decay."),
    freeze: Path | None = typer.Option(
        None, "--freeze", help="Freeze YAML (`unfrozen_parameters:`) or a spear-mm plan (t = 1 layers frozen)."
    ),
    threads: int = typer.Option(1, help="Torch CPU threads (1 is fastest for small models; see docs)."),
    save_steps: int = typer.Option(0, help="Checkpoint every N steps into OUT.work/ (0: none)."),
    resume_from_checkpoint: str | None = typer.Option(
        None, "--resume-from-checkpoint", help="'latest' (in OUT.work/checkpoints) or a checkpoint folder."
    ),
    seed: int = typer.Option(0, help="Random seed (data order, dropout)."),
    device: str = typer.Option("auto", metavar="[auto|cpu|cuda|cuda:N]", help="Where training runs."),
    logging_steps: int = typer.Option(10, help="Log loss and tokens/s every N steps."),
    max_corpus_tokens: int | None = typer.Option(None, help="Tokens to read (default: what max-steps uses)."),
    save_dtype: str = typer.Option(
        "auto",
        "--save-dtype",
        metavar="[auto|base|bf16|fp16|fp32|bfloat16|float16|float32]",
        help="dtype of the saved model (auto: float32 on CPU, the base's dtype on CUDA).",
    ),
    force: bool = typer.Option(False, "--force", "--overwrite", help="Replace an existing OUT when done."),
) -> None:
    """Continually pre-train BASE on the corpus with the Hugging Face Trainer; writes OUT with cost.json."""

    checks.positive("--threads", threads)
    if device != "auto":
        checks.device(device)  # cuda:N too, refused as merge refuses it, before the corpus or the model is read
    files = [*(corpus or []), *(more_corpus or [])]
    if not files:
        raise SpearError("cpt: no corpus given; pass --corpus FILE [FILE ...].")
    resume: bool | Path = False
    if resume_from_checkpoint:
        resume = True if resume_from_checkpoint == "latest" else Path(resume_from_checkpoint)
    try:
        config = CptConfig(
            text_field=text_field,
            seq_len=seq_len,
            max_steps=max_steps,
            lr=lr,
            scheduler=scheduler,
            warmup_steps=warmup_steps,
            batch_size=batch_size,
            grad_accum=grad_accum,
            weight_decay=weight_decay,
            freeze=freeze,
            threads=threads,
            save_steps=save_steps,
            resume_from_checkpoint=resume,
            seed=seed,
            device=device,
            logging_steps=logging_steps,
            max_corpus_tokens=max_corpus_tokens,
            save_dtype=save_dtype,
            overwrite=force,
        )
    except ValueError as exc:
        raise SpearError(f"cpt: invalid option — {exc}") from exc
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # save_pretrained's "Writing model shards" bar too: the steps are drawn here
    with Drawer(LOOKS) as progress:  # a bar on a terminal, plain lines otherwise (every 30 s and at the end)
        result = cpt(base, files, out, config.model_copy(update={"progress": False}), progress=progress)
    table = Table(title=f"CPT → {result.out}", show_header=False)
    for key, value in [
        ("steps", result.steps),
        ("train tokens", f"{result.train_tokens:,}"),
        ("final loss", f"{result.final_loss:.4f}" if result.final_loss is not None else "-"),
        ("tokens/s", f"{result.tokens_per_second:,.0f}"),
        ("wall seconds", f"{result.wall_seconds:.1f}"),
        ("trainable parameters", f"{result.trainable_parameters:,} of {result.total_parameters:,}"),
        ("frozen layers", ", ".join(map(str, result.frozen_layers)) or "none"),
        ("device / threads", f"{result.device} / {result.threads}"),
    ]:
        table.add_row(key, str(value))
    out_console.print(table)


def convert_llama2c_cmd(
    checkpoint: Path = typer.Argument(..., help="llama2.c v0 checkpoint, e.g. stories260K.bin."),
    tokenizer_file: Path | None = typer.Argument(
        None, metavar="[TOKENIZER]", help="llama2.c tokenizer, e.g. tok512.bin."
    ),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help="The tokenizer, as an option (same as TOKENIZER)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output Hugging Face folder (must not exist)."),
) -> None:
    """Convert a llama2.c checkpoint and tokenizer into a Hugging Face Llama folder:
    spear-mm convert-llama2c MODEL.bin TOK.bin -o OUT."""

    if tokenizer_file is not None and tokenizer is not None and tokenizer_file != tokenizer:
        raise SpearError(f"two tokenizers given ({tokenizer_file} and --tokenizer {tokenizer}): give one.")
    tok = tokenizer_file or tokenizer
    if tok is None:
        raise SpearError(
            "convert-llama2c needs the llama2.c tokenizer too: spear-mm convert-llama2c MODEL.bin TOK.bin -o OUT "
            "(e.g. stories260K.bin tok512.bin; llama2.c's tokenizer.bin for its 32000-token models)."
        )
    out_console.print(f"wrote {convert_llama2c(checkpoint, tok, out)}")


def register(app: typer.Typer) -> None:
    app.command("cpt")(cpt_cmd)
    app.command("convert-llama2c")(convert_llama2c_cmd)

"""cpt's work folder `<out>.work/` (checkpoints, log): when it may be used, reused or must be refused, and which
checkpoint a resumed run starts from."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from spear_mm.errors import SpearError

log = logging.getLogger(__name__)

WORK_MARK = ".spear-mm-cpt-work"  # in `<out>.work/`: spear-mm made this folder (it may delete and reuse it)


def check_work_dir(out: Path) -> Path:
    """`<out>.work/` may be used only when it is absent, empty, or made by cpt (its mark inside); else refused."""
    work = out.with_name(out.name + ".work")
    if work.is_symlink() or (work.exists() and not work.is_dir()):
        raise SpearError(f"{work}: cpt's work folder path is a link or a file. Remove it, or choose another -o.")
    if work.is_dir() and any(work.iterdir()) and not (work / WORK_MARK).is_file() and not cpt_layout(work):
        raise SpearError(
            f"{work} exists and was not made by spear-mm cpt (no {WORK_MARK} inside); cpt keeps its checkpoints "
            "there and would delete it. Move it away, or choose another -o."
        )
    return work


def cpt_layout(work: Path) -> bool:
    """A work folder of a cpt from before the mark: only checkpoints/checkpoint-N/ and train_log.jsonl inside."""
    names = {p.name for p in work.iterdir()}
    ckpts = work / "checkpoints"
    return (
        names <= {"checkpoints", "train_log.jsonl"}
        and ckpts.is_dir()
        and not ckpts.is_symlink()
        and all(p.name.startswith("checkpoint-") and p.is_dir() for p in ckpts.iterdir())
    )


def work_dir(out: Path, resume: bool | str) -> Path:
    """`<out>.work/`: reused when resuming, refused when it holds checkpoints of another run."""
    work = check_work_dir(out)
    ckpts = sorted((work / "checkpoints").glob("checkpoint-*"))
    if ckpts and resume is False:
        raise SpearError(
            f"{work}: checkpoints of an interrupted run exist; pass --resume-from-checkpoint latest "
            "to continue it, or delete the folder to start over."
        )
    if resume is False:
        shutil.rmtree(work, ignore_errors=True)
    (work / "checkpoints").mkdir(parents=True, exist_ok=True)
    (work / WORK_MARK).touch()
    return work


def resume_arg(resume: bool | str, work: Path) -> str | None:
    """The Trainer's `resume_from_checkpoint`: None, the latest checkpoint in `work`, or the folder given."""
    if resume is False:
        return None
    if resume is True:
        ckpts = sorted((work / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
        if not ckpts:
            log.warning("no checkpoint in %s: starting from the base model", work / "checkpoints")
            return None
        return str(ckpts[-1])
    path = Path(resume)
    if not path.is_dir():
        raise SpearError(f"{path}: checkpoint folder not found.")
    return str(path)

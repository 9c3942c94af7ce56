"""Option checks shared by the commands: refused before any work starts, so nothing is left half-written."""

from __future__ import annotations

from pathlib import Path

from spear_mm.errors import SpearError
from spear_mm.merging.merge import resolve_device


def device(value: str) -> str:
    """A device torch can use here (a CUDA request on a CPU-only torch is refused with the fix)."""

    resolve_device(value)
    return value


def positive(option: str, value: int | None) -> int | None:
    """None (the default) or an integer ≥ 1."""
    if value is not None and value < 1:
        raise SpearError(f"{option} {value}: give a whole number of at least 1 (or leave it out for the default).")
    return value


def file_option(option: str, path: Path | None) -> Path | None:
    """An existing file (not a folder)."""
    if path is None:
        return None
    if path.is_dir():
        raise SpearError(f"{option} {path} is a folder; give the file inside it (e.g. {path / 'plan.yaml'}).")
    if not path.is_file():
        raise SpearError(f"{option} {path}: no such file. Check the path.")
    return path

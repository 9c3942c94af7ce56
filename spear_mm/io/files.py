"""Small file helpers every stage shares: one atomic write, and text reads that fail with a clear message."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from spear_mm.errors import SpearError


def atomic_write(path: str | Path, write: Callable[[IO[str]], None], *, newline: str | None = None) -> Path:
    """Write a text file so that readers see the old or the new content, never a part.

    A uniquely named temporary file in the same folder is written, flushed and renamed over `path`, so two
    writers at once each leave a complete file (the last rename wins) and a kill leaves no half file.

    Args:
        path: the file to (re)write; its folder is created.
        write: called with the open temporary file.
        newline: passed to `open` (use "" for csv).
    Returns:
        `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline=newline) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write` of a whole string. Returns `path`."""
    return atomic_write(path, lambda f: f.write(text))


def read_text(path: str | Path, *, what: str = "file") -> str:
    """A UTF-8 text file's content, or a SpearError that names the file, the problem and the fix.

    Args:
        path: the file to read.
        what: what the file is, for the message (e.g. "plan", "suite").
    """
    path = Path(path)
    if path.is_dir():
        raise SpearError(f"{path}: is a folder, not a {what} file; pass the file itself.")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SpearError(f"{path}: no such {what} file.") from exc
    except UnicodeDecodeError as exc:
        raise SpearError(
            f"{path}: the {what} is not UTF-8 text (byte {exc.start}: {exc.reason}); re-save it as UTF-8."
        ) from exc
    except OSError as exc:
        raise SpearError(f"{path}: cannot read the {what} ({exc.strerror or exc}).") from exc

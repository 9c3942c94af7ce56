"""The one atomic file write every stage shares, and content keys of JSON-able inputs (user files are read with
`spear_mm.errors.read_text`)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


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
    # `.NAME.PID.tmp`-style names (unique per call): the next run removes those of dead processes
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
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


def content_key(**inputs: Any) -> str:
    """sha256 (16 hex) of the canonical JSON of the inputs."""
    raw = json.dumps(inputs, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]

"""The one atomic file write every stage shares, a uniquely named temporary folder, and content keys of JSON-able
inputs (user files are read with `spear_mm.errors.read_text`). Both follow the umask (0644 / 0755 under 022) like
any file a tool writes: `tempfile.mkstemp`/`mkdtemp` would leave 0600 / 0700 after the rename, which a teammate,
a worker running as another user or a model server cannot read."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
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
    # `.NAME.PID.XXXXXXXX.tmp` (unique per call): the next run removes those of dead processes
    fd, tmp = _create(lambda name: os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path.parent,
                      f".{path.name}.{os.getpid()}.", ".tmp")  # fmt: skip
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


def _create(make: Callable[[str], Any], folder: Path, prefix: str, suffix: str) -> tuple[Any, str]:
    """`make(name)` for a fresh unique name in `folder` (O_EXCL / mkdir semantics: a clash tries another name)."""
    for _ in range(100):
        name = str(folder / f"{prefix}{secrets.token_hex(4)}{suffix}")
        try:
            return make(name), name
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name {prefix}*{suffix} in {folder}")


def temp_dir(parent: str | Path, prefix: str) -> Path:
    """A new, uniquely named folder `parent/PREFIX<hex>` with the umask's mode (not mkdtemp's 0700)."""
    return Path(_create(lambda name: os.mkdir(name, 0o777), Path(parent), prefix, "")[1])


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write` of a whole string. Returns `path`."""
    return atomic_write(path, lambda f: f.write(text))


def content_key(**inputs: Any) -> str:
    """sha256 (16 hex) of the canonical JSON of the inputs."""
    raw = json.dumps(inputs, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]

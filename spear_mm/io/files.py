"""The one atomic file write every stage shares, a uniquely named temporary folder, appends that never write
through a link, and content keys of JSON-able inputs (user files are read with `spear_mm.errors.read_text`).

Temporary files are named `.NAME.spear-mm-PID-TOKEN.XXXX.tmp`: TOKEN is this process's `RUN_TOKEN`, which a
resumable folder records (spear_mm.io.workdir), so a later run removes only temporaries it can prove a spear-mm
run of that folder made. Files and folders follow the umask (0644 / 0755 under 022) like any file a tool writes:
`tempfile.mkstemp`/`mkdtemp` would leave 0600 / 0700 after the rename, which a teammate, a worker running as
another user or a model server cannot read."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from spear_mm.errors import SpearError

RUN_TOKEN = uuid.uuid4().hex[:8]  # this process's run: its temporary files carry it with the pid


def temp_prefix(path: Path) -> str:
    """`.NAME.spear-mm-PID-TOKEN.`: the start of every temporary file written for `path`."""
    return f".{path.name}.spear-mm-{os.getpid()}-{RUN_TOKEN}."


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
    return _atomic(path, write, "w", newline)


def _atomic(path: str | Path, write: Callable[[IO], None], mode: str, newline: str | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _open_temp(path)  # unique per call; the rename replaces a link at `path`, never its target
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _open_temp(path: Path) -> tuple[int, str]:
    return _create(
        lambda name: os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path.parent, temp_prefix(path), ".tmp"
    )


def temp_file(path: str | Path) -> Path:
    """An empty, uniquely named temporary file beside `path` (umask mode, this run's token) for a writer that
    needs a file name (safetensors): write it, then `os.replace` it onto `path`."""
    fd, tmp = _open_temp(Path(path))
    os.close(fd)
    return Path(tmp)


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


def umask() -> int:
    """This process's umask (read from /proc, so no thread sees it changed; else set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def follow_umask(folder: str | Path) -> None:
    """Give the plain files in `folder` (recursively, links not followed) the umask's mode: libraries that write
    through their own temporary file (safetensors ≥ 0.8, hence `save_pretrained`) leave 0600."""
    mode = 0o666 & ~umask()
    for path in Path(folder).rglob("*"):
        st = path.lstat()
        if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != mode:
            os.chmod(path, mode)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write` of a whole string. Returns `path`."""
    return atomic_write(path, lambda f: f.write(text))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """`atomic_write` of bytes (figures). Returns `path`."""
    return _atomic(path, lambda f: f.write(data), "wb")


def open_append(path: str | Path) -> IO[str]:
    """Open a log or journal for appending without following a link and without writing a file that has another
    name elsewhere (a hard link): such an entry is refused, naming it, since it may be an input."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError:
        if os.path.islink(path):
            raise SpearError(
                f"{path} is a link; spear-mm never writes through a link in its output. Remove it."
            ) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        raise SpearError(
            f"{path} is not a plain file of its own (it has {st.st_nlink} names: a hard link, maybe to an input); "
            "spear-mm never appends to it. Remove or rename it, then re-run."
        )
    return os.fdopen(fd, "a", encoding="utf-8")


def open_fresh(path: str | Path) -> IO[str]:
    """Open `path` as a new, empty file: whatever sits there (a file, a link) is removed first, so nothing it
    pointed to is written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    return os.fdopen(fd, "w", encoding="utf-8")


def content_key(**inputs: Any) -> str:
    """sha256 (16 hex) of the canonical JSON of the inputs."""
    raw = json.dumps(inputs, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def file_key(path: str | Path) -> str:
    """sha256 (16 hex) of a file's bytes (a probe, a plan): what `content_key` takes for a file's content."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]

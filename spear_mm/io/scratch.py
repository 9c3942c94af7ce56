"""Scratch folders in $TMPDIR that a killed process leaves behind, and the next run proves stale and removes.

`scratch_dir("spear-lm-eval-")` creates `$TMPDIR/spear-lm-eval-<pid>-<start>-<token>` (mode 700): the pid and the
start time of the process (clock ticks since boot, from /proc) identify the very process that made it, so a
later run can tell a dead owner from a live one even when the pid was reused; the random token keeps two
folders of one process apart. Before creating its own, a run removes the folders of its prefix whose owner is
gone — only plain folders (not links), owned by this user, whose name has exactly that form.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _start_ticks(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat), '0' without /proc, None when it is not running."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[19]
    except FileNotFoundError:
        return None if Path("/proc/self/stat").exists() else _alive_without_proc(pid)
    except (OSError, IndexError):
        return "?"  # unreadable: treat as alive (never delete what we cannot prove stale)


def _alive_without_proc(pid: int) -> str | None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except OSError:
        pass
    return "0"


def _stale(folder: Path, match: re.Match) -> bool:
    try:
        info = folder.lstat()
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        return False
    pid, start = int(match.group(1)), match.group(2)
    now = _start_ticks(pid)
    return now is None or now not in (start, "?", "0")


def clean_stale(prefix: str, root: Path | None = None) -> list[Path]:
    """Remove `root/<prefix><pid>-<start>-<token>` folders whose process is gone; returns what was removed."""
    root = Path(root or tempfile.gettempdir())
    pattern = re.compile(re.escape(prefix) + r"(\d+)-(\d+)-([0-9a-f]{8})")
    removed = []
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            match = pattern.fullmatch(entry.name)
            if match and _stale(entry, match):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


@contextlib.contextmanager
def scratch_dir(prefix: str, root: Path | None = None) -> Iterator[Path]:
    """A private scratch folder named so the next run can prove it stale (see the module); removed on exit."""
    root = Path(root or tempfile.gettempdir())
    clean_stale(prefix, root)
    pid, start = os.getpid(), _start_ticks(os.getpid()) or "0"
    folder = root / f"{prefix}{pid}-{start if start.isdigit() else 0}-{secrets.token_hex(4)}"
    folder.mkdir(mode=0o700)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)

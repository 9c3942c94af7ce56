"""The one owner of every output a command writes: checks, a lock, a temporary folder, a recoverable commit.

Promises (docs/reliability.md):
- an output never is, contains or lies inside an input, nor the target of a link inside an input folder (paths
  compared after resolving symlinks: `input_paths`); nothing replaces the working folder or a parent of it;
- one writer per output: an exclusive lock file `.NAME.spear-mm.lock` beside it (a second writer is refused);
- an existing output is replaced only with `--force`, and never when it changed after the command started;
- a new folder is written to `.NAME.spear-mm-tmp-PID-XXXX` and renamed when complete; a `--force` swap goes
  through `.NAME.spear-mm-new-PID-XXXX` (complete) and `.NAME.spear-mm-old-PID-XXXX`, so a kill at any point
  leaves a state the next run finishes (`recover`);
- temporary folders of dead owners (pid no longer alive) are removed by the next run on the same output.
Resumable folders written in place (analyze, evaluate, run) are `spear_mm.io.workdir.WorkDir`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import uuid
from pathlib import Path

from spear_mm.errors import SpearError
from spear_mm.io.files import atomic_write_text, follow_umask

log = logging.getLogger(__name__)

_TAG = "spear-mm"
_OWNED = re.compile(rf"^\.(?P<name>.+)\.{_TAG}-(?P<kind>tmp|new|old)-(?P<pid>\d+)-[0-9a-f]+(?:i(?P<ino>\d+))?$")


# -- inputs vs outputs --------------------------------------------------------------------------------------------
def resolved(path: str | Path) -> Path:
    """Absolute path with `~` expanded and every symlink resolved (also those of the parents)."""
    return Path(path).expanduser().resolve()


def input_paths(inputs: list[str | Path]) -> list[Path]:
    """Every path an input occupies, resolved: the inputs themselves and, inside input folders, the targets of
    their links (a hub snapshot's files live in `../../blobs/`, adapted weights may link into a store)."""
    found: dict[Path, None] = {}
    for raw in inputs:
        inp = resolved(raw)
        found[inp] = None
        if not inp.is_dir():
            continue
        seen = 0
        for folder, dirs, files in os.walk(inp):  # links are not followed into, only resolved
            for name in (*dirs, *files):
                entry = Path(folder, name)
                seen += 1
                if entry.is_symlink():
                    found[Path(os.path.realpath(entry))] = None  # never raises, even on a link loop
            if seen > _MAX_WALK:
                break
    return list(found)


_MAX_WALK = 50_000  # entries looked at per input folder (model folders hold a few dozen)


def check_not_input(out: str | Path, inputs: list[str | Path], what: str = "output") -> Path:
    """Refuse an output that is, contains or lies inside an input (or a link target inside an input folder);
    returns the resolved output path."""
    final = resolved(out)
    for inp in input_paths(inputs):
        if final == inp or inp in final.parents or final in inp.parents:
            relation = "the same path" if final == inp else ("inside it" if inp in final.parents else "it contains it")
            raise SpearError(
                f"{what} {final} overlaps the input {inp} ({relation}); spear-mm never writes into or over an input "
                "(it may be the only copy of a model). Choose an output path outside every input (and outside what "
                "their links point to)."
            )
    return final


def check_not_cwd(final: Path, what: str = "output") -> None:
    """Refuse replacing the working folder or one of its parents (`-o ''`, `-o .`, `-o ..`: an unset variable)."""
    cwd = Path.cwd().resolve()
    if final == cwd or final in cwd.parents:
        raise SpearError(
            f"{what} {final} is the current folder or one of its parents; spear-mm never replaces or moves it "
            "(an empty -o, e.g. an unset variable, means the current folder). Give a new folder's path."
        )


def check_new_file(out: str | Path, inputs: list[str | Path], force: bool, what: str = "output") -> Path:
    """A single output file: not an input, not a folder, and not an existing file unless `force`."""
    final = check_not_input(out, inputs, what)
    if final.is_dir():
        raise SpearError(f"{what} {final} is a folder; give a file name, e.g. {final / 'plan.yaml'}.")
    if final.exists() and not force:
        raise SpearError(f"{what} {final} already exists. Choose another name, or pass --force to replace it.")
    return final


def check_output(out: str | Path, inputs: list[str | Path], force: bool) -> Path:
    """Refuse outputs that overlap an input, and non-empty outputs without --force; returns the resolved path.
    What a killed spear-mm process left for this output is recovered first (see `recover`)."""
    final = check_not_input(out, inputs)
    check_not_cwd(final)
    if any(not pid_alive(pid) for _, pid, _ in owned_siblings(final)):
        try:
            with OutputLock(final):
                recover(final)
        except SpearError:  # another live process holds the output: it will be refused later with that message
            pass
    if final.exists() and not _empty_dir(final) and not force:
        raise SpearError(
            f"output {final} already exists and is not empty. Choose a new folder, or pass --force to "
            "replace it (it is only replaced once the new output is complete)."
        )
    return final


def _empty_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def check_free_space(folder: Path, needed: int) -> None:
    """Fail before writing when the disk holding `folder` has less than `needed` bytes (+2% margin) free."""
    probe = Path(folder)
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed * 1.02:
        raise SpearError(
            f"not enough disk space for {folder}: need {human_bytes(needed * 1.02)}, {human_bytes(free)} free "
            "on that disk. Free space or write elsewhere."
        )


def human_bytes(n: float) -> str:
    """1234 -> '1.2 kB', 5e9 -> '5.00 GB' (never '0.00 GB' for a small size)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} bytes"


# -- one writer per output ----------------------------------------------------------------------------------------
def lock_path(final: Path) -> Path:
    return final.parent / f".{final.name}.{_TAG}.lock"


class OutputLock:
    """An exclusive, non-blocking `flock` on `.NAME.spear-mm.lock` beside the output (released on exit or death)."""

    def __init__(self, final: Path):
        self.final = final
        self.path = lock_path(final)
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise SpearError(
                    f"another spear-mm process is writing {self.final} (it holds {self.path}). Wait for it to "
                    "finish, or choose another output folder."
                ) from None
            try:  # the holder before us may have removed the file: lock the file that is there now
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._fd = fd
                return self
            os.close(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# -- temporary folders, recovery, cleanup -------------------------------------------------------------------------
def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def owned_siblings(final: Path) -> list[tuple[str, int, Path]]:
    """(kind, pid, path) of the temporary folders spear-mm made for `final` (tmp / new / old)."""
    found = []
    if not final.parent.is_dir():
        return found
    for p in final.parent.iterdir():
        m = _OWNED.match(p.name)
        if m and m.group("name") == final.name:
            found.append((m.group("kind"), int(m.group("pid")), p))
    return found


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def recover(final: Path) -> list[str]:
    """Finish what a dead spear-mm process left for `final`; call with the lock held. Returns what was done.

    A complete new output (`-new-`) whose swap was interrupted is moved into place; the old output (`-old-`) is
    put back when no new one exists; half-written temporaries (`-tmp-`) of dead owners are removed.
    """
    done: list[str] = []
    dead = [(k, p) for k, pid, p in owned_siblings(final) if not pid_alive(pid)]
    news = sorted((p for k, p in dead if k == "new"), key=lambda p: p.stat().st_mtime)
    olds = [p for k, p in dead if k == "old"]
    if news:
        newest = news[-1]
        replaces = _OWNED.match(newest.name).group("ino")  # the inode of the output it was allowed to replace
        current = _identity(final)
        if current is not None and (replaces is None or current[1] != int(replaces)):
            aside = final.with_name(f"{final.name}.spear-mm-new-{_OWNED.match(newest.name).group('pid')}")
            newest.rename(aside)  # the output changed since: never replace it; keep the finished result visible
            done.append(f"{final} changed after a spear-mm run was killed; its complete output is kept at {aside}")
        else:
            if current is not None:
                trash = _sibling(final, "old")
                final.rename(trash)
                olds.append(trash)
            newest.rename(final)
            done.append(f"finished an interrupted replacement of {final} (the new output was complete)")
        for p in news[:-1]:
            _remove(p)
    elif olds and not (final.exists() or final.is_symlink()):
        olds.sort(key=lambda p: p.stat().st_mtime)
        olds.pop().rename(final)
        done.append(f"restored {final} from an interrupted replacement")
    for p in olds:
        _remove(p)
    for kind, p in dead:
        if kind == "tmp" and p.exists():
            _remove(p)
            done.append(f"removed the stale temporary folder {p.name} of a dead spear-mm process")
    for line in done:
        log.warning("%s", line)
    return done


def _sibling(final: Path, kind: str, replaces: int | None = None) -> Path:
    """`.NAME.spear-mm-KIND-PID-XXXXXXXX`; a `new` folder also names the inode of the output it may replace."""
    tail = "" if replaces is None else f"i{replaces}"
    return final.parent / f".{final.name}.{_TAG}-{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}{tail}"


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class AtomicDir:
    """A new output folder: checks, lock, recovery, a temporary sibling, and a commit that replaces only what
    this command was allowed to replace at its start (`force`), through a swap the next run can finish.

    Use as a context manager; `tmp` is where to write; `commit()` publishes; an exception discards the folder.
    """

    def __init__(self, final: str | Path, inputs: list[str | Path] = (), force: bool = False):
        self.final = check_output(final, list(inputs), force)
        self.force = force
        self.lock = OutputLock(self.final).acquire()
        try:
            recover(self.final)
            self.final = check_output(self.final, list(inputs), force)  # a recovered output counts too
            self.start_identity = _identity(self.final)
            self.tmp = _sibling(self.final, "tmp")
            self.tmp.mkdir()
        except BaseException:
            self.lock.release()
            raise
        self.committed = False

    def commit(self) -> Path:
        """Publish `tmp` as `final`; refuse to replace an output that appeared or changed since the start."""
        follow_umask(self.tmp)  # what save_pretrained wrote as 0600 is readable like every other output
        now = _identity(self.final)
        if now is not None and (now != self.start_identity or (not self.force and not _empty_dir(self.final))):
            kept = self.final.with_name(f"{self.final.name}.spear-mm-new-{os.getpid()}")
            self.tmp.rename(kept)
            self._done()
            raise SpearError(
                f"{self.final} was created or changed by something else while spear-mm was writing it, so it was "
                f"not replaced. The new output is complete and kept at {kept}; move it where you want it."
            )
        if now is None:
            self.tmp.rename(self.final)
        else:
            new = _sibling(self.final, "new", replaces=now[1])
            self.tmp.rename(new)  # complete: from here a killed run is finished by the next one
            old = _sibling(self.final, "old")
            self.final.rename(old)
            new.rename(self.final)
            _remove(old)
        self._done()
        return self.final

    def _done(self) -> None:
        self.committed = True
        self.lock.release()

    def discard(self) -> None:
        if not self.committed:
            _remove(self.tmp)
            self._done()

    def __enter__(self) -> AtomicDir:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.discard()


def write_file(
    out: str | Path, text: str, inputs: list[str | Path] = (), what: str = "output", force: bool = False
) -> Path:
    """A single output file (plan YAML, exports): checked by `check_new_file`, written atomically."""
    return atomic_write_text(check_new_file(out, list(inputs), force, what), text)

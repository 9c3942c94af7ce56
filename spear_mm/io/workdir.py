"""Resumable output folders written in place (analyze scores, evaluate results, a run folder, the demo's run).

Promises (docs/reliability.md, "Links, owners and temporary files"):
- the folder is not an input (spear_mm.io.outputs.check_not_input) and has one writer at a time (its lock);
- no entry in it links outside it (such a folder is refused, naming the entry), so nothing a command writes
  there can land in an input; files are replaced by rename and logs opened without following links
  (spear_mm.io.files);
- it records whose folder it is (`.spear-mm-folder`: e.g. the pair's fingerprints); another owner is refused,
  or with `force` the old folder is moved aside whole (`NAME.replaced-STAMP`), never mixed with the new one;
- temporary files are removed only when their name carries a pid that is dead and a run token this folder
  recorded (spear_mm.io.files.RUN_TOKEN), so a user's `.x.123.tmp` is never touched.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spear_mm.errors import SpearError
from spear_mm.io.files import RUN_TOKEN, atomic_write_text
from spear_mm.io.outputs import OutputLock, check_not_cwd, check_not_input, pid_alive, recover

log = logging.getLogger(__name__)

META = ".spear-mm-folder"  # JSON: {"owner": {...}, "tokens": [...]}; no .json suffix, so `*.json` globs skip it
_TMP_FILE = re.compile(r"^\.(?P<name>.+)\.spear-mm-(?P<pid>\d+)-(?P<token>[0-9a-f]{8})\.[\w-]*\.?tmp$")


def outside_links(folder: Path) -> list[tuple[Path, Path]]:
    """(entry, target) of every link under `folder` whose target lies outside it (or dangles outside it)."""
    root = folder.resolve()
    found = []
    for parent, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            entry = Path(parent, name)
            if entry.is_symlink():
                target = Path(os.path.realpath(entry))  # never raises, even on a link loop
                if target != root and root not in target.parents:
                    found.append((entry, target))
    return found


def check_no_outside_links(folder: Path, what: str) -> None:
    links = outside_links(folder)
    if links:
        entry, target = links[0]
        more = f" (and {len(links) - 1} more)" if len(links) > 1 else ""
        raise SpearError(
            f"{what} {folder}: the entry {entry} is a link to {target}, outside the folder{more}. spear-mm writes "
            "into this folder and never writes through a link (it may lead to an input). Remove the link, or "
            "choose another output folder."
        )


def read_meta(folder: Path) -> dict[str, Any]:
    """The folder's record (empty when there is none); an unreadable one is a clear error naming it."""
    path = folder / META
    if not (path.exists() or path.is_symlink()):
        return {}
    if path.is_symlink() or not path.is_file():
        raise SpearError(
            f"{path}: not the record spear-mm writes (a link or a folder). Remove it, or choose another folder."
        )
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise SpearError(
            f"{path}: not the record spear-mm writes (not UTF-8 JSON). Remove it if this folder is yours, or "
            "choose another output folder."
        ) from None
    return data if isinstance(data, dict) else {}


def clean_stale_files(folder: Path, tokens: set[str]) -> set[str]:
    """Remove `.NAME.spear-mm-PID-TOKEN.….tmp` files under `folder` whose TOKEN this folder recorded and whose PID
    is dead; returns the tokens whose files could not all be removed yet (a live pid)."""
    kept: set[str] = set()
    for p in folder.rglob(".*.tmp"):
        m = _TMP_FILE.match(p.name)
        if not m or m.group("token") not in tokens or p.is_symlink() or not p.is_file():
            continue
        if pid_alive(int(m.group("pid"))):
            kept.add(m.group("token"))
        else:
            p.unlink(missing_ok=True)
    return kept


def _describe(owner: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in owner.items())


class WorkDir:
    """A resumable folder written in place: not an input, one writer at a time (lock), no links leading out,
    one owner (`owner`, e.g. the pair's fingerprints; `legacy(folder)` reads it from folders made before the
    record existed), and what dead runs of this folder left behind is cleaned first.

    With `force`, a folder of another owner is moved aside whole to `NAME.replaced-STAMP` and a fresh one begun.
    """

    def __init__(
        self,
        final: str | Path,
        inputs: list[str | Path] = (),
        *,
        owner: dict | None = None,
        force: bool = False,
        what: str = "output folder",
        legacy: Callable[[Path], dict | None] | None = None,
    ):
        self.final = check_not_input(final, list(inputs))
        if self.final.exists() and not self.final.is_dir():
            raise SpearError(f"output {self.final} exists and is not a folder. Choose a folder path.")
        self.owner, self.force, self.what, self.legacy = owner, force, what, legacy
        self.lock = OutputLock(self.final)
        self.moved_aside: Path | None = None
        self.created = False

    def __enter__(self) -> Path:
        self.lock.acquire()
        try:
            recover(self.final)
            if self.final.is_dir():
                self._open_existing()
            self.created = not self.final.is_dir()
            self.final.mkdir(parents=True, exist_ok=True)
            meta = read_meta(self.final)
            tokens = set(meta.get("tokens", [])) if isinstance(meta.get("tokens"), list) else set()
            kept = clean_stale_files(self.final, tokens)
            owner = self.owner if self.owner is not None else meta.get("owner")
            atomic_write_text(self.final / META, json.dumps({"owner": owner, "tokens": sorted(kept | {RUN_TOKEN})}))
        except BaseException:
            self.lock.release()
            raise
        return self.final

    def _open_existing(self) -> None:
        check_no_outside_links(self.final, self.what)
        if self.owner is None:
            return
        previous = read_meta(self.final).get("owner") or (self.legacy(self.final) if self.legacy else None)
        if not previous or previous == self.owner:
            return
        if not self.force:
            raise SpearError(
                f"{self.what} {self.final} belongs to another {', '.join(self.owner)} ({_describe(previous)}; "
                f"this one is {_describe(self.owner)}). Its results are not reused or replaced unasked: choose "
                "another folder, or pass --force to move the old folder aside (NAME.replaced-TIME) and start afresh."
            )
        check_not_cwd(self.final, self.what)
        aside = self.final.with_name(f"{self.final.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        while aside.exists():
            aside = aside.with_name(aside.name + "x")
        self.final.rename(aside)
        self.moved_aside = aside
        log.warning("%s %s held another %s's results: moved aside to %s", self.what, self.final, "owner", aside)

    def __exit__(self, *exc: object) -> None:
        try:  # a folder this command created and left with nothing but its record (it failed early) goes again
            if self.created and {p.name for p in self.final.iterdir()} == {META}:
                (self.final / META).unlink()
                self.final.rmdir()
        except OSError:
            pass
        self.lock.release()


def pair_owner(base_fingerprint: str, adapted_fingerprint: str) -> dict[str, str]:
    """The owner record of a folder made for one base/adapted pair."""
    return {"base": base_fingerprint, "adapted": adapted_fingerprint}


def scored_pair(scores_json: str) -> Callable[[Path], dict | None]:
    """`legacy` for folders made before the record: the pair named by FOLDER/`scores_json` (analyze's table)."""

    def read(folder: Path) -> dict | None:
        try:
            data = json.loads((folder / scores_json).read_bytes().decode("utf-8"))
            return pair_owner(data["base_fingerprint"], data["adapted_fingerprint"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    return read

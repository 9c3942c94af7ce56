"""One exception type for every user-facing failure: a message that names the file/tensor and the fix."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from pydantic import ValidationError


class SpearError(Exception):
    """A problem with the user's input or environment. The CLI prints the message and exits with code 2."""


_OS_FIXES = {
    "EROFS": "the file system is read-only: write the output to a writable disk (-o elsewhere)",
    "ENOSPC": "the disk is full: free space or write the output to another disk",
    "EDQUOT": "your disk quota is used up: free space or write the output elsewhere",
    "EFBIG": "the file is larger than this process may write (`ulimit -f`, or the file system's limit): raise the "
    "limit or write to another file system",
    "EACCES": "permission denied: choose a path you may read/write, or fix its permissions",
    "EPERM": "operation not permitted: choose a path you may read/write, or fix its permissions",
    "ENOENT": "no such file or folder: check the path",
    "EISDIR": "a folder was given where a file is expected: give the file's path",
    "ENOTDIR": "a file was given where a folder is expected: give the folder's path",
}


def describe_os_error(exc: OSError) -> str:
    """One paragraph for an operating-system error: the file, what happened, and the fix."""
    import errno

    code = errno.errorcode.get(exc.errno or 0, "")
    where = " and ".join(str(f) for f in (exc.filename, exc.filename2) if f) or "a file"
    fix = _OS_FIXES.get(code, "check the path, the disk and the permissions")
    return (
        f"{where}: {exc.strerror or exc} ({code or type(exc).__name__}); {fix}. Inputs were not changed and no "
        "partial output was published (temporary files are removed, or by the next run if this one was killed)."
    )


@contextlib.contextmanager
def library_os_errors(where: object) -> Iterator[None]:
    """Turn a library error that wraps an OS error only in its text (safetensors' `SafetensorError: … No space
    left on device (os error 28)`) into that `OSError` on `where`, so it is reported like any disk error."""
    try:
        yield
    except (OSError, SpearError, KeyboardInterrupt):
        raise
    except Exception as exc:
        found = re.search(r"os error (\d+)", str(exc))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(where)) from exc


def describe_unicode_error(exc: UnicodeDecodeError, path: object) -> SpearError:
    """A text input that is not UTF-8, naming the file and the byte."""
    return SpearError(
        f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}). Save the file as "
        "UTF-8 (e.g. `iconv -f latin1 -t utf-8 FILE > FILE.utf8`)."
    )


def read_text(path: object, what: str = "file", encoding: str = "utf-8") -> str:
    """The text of a user's file, or a SpearError naming it: missing, a folder, unreadable, or not `encoding`."""
    from pathlib import Path

    p = Path(str(path))
    if p.is_dir():
        raise SpearError(f"{what} {p} is a folder; give the file inside it.")
    try:
        return p.read_text(encoding=encoding)
    except FileNotFoundError:
        raise SpearError(f"{what} {p}: no such file. Check the path.") from None
    except UnicodeDecodeError as exc:
        if encoding.replace("-", "").lower() != "utf8":
            raise SpearError(f"{what} {p}: not {encoding} text (byte offset {exc.start}); fix its encoding.") from None
        raise describe_unicode_error(exc, f"{what} {p}") from None


class FieldError(NamedTuple):
    """One pydantic error as spear-mm words it: the dotted field, pydantic's message (without its "Value error, "
    prefix), the value given and pydantic's error type."""

    field: str
    msg: str
    input: Any
    type: str
    loc: tuple


def field_errors(exc: ValidationError) -> list[FieldError]:
    """Every error of a pydantic validation, for the one-paragraph messages of plans, suites, configs and flags."""
    return [
        FieldError(
            ".".join(str(x) for x in e["loc"] if x != "[key]"),  # a mapping's bad key: `operators.bogus`
            e["msg"].removeprefix("Value error, "),
            e.get("input"),
            e["type"],
            tuple(e["loc"]),
        )
        for e in exc.errors()
    ]


def validation_message(exc: ValidationError, prefix: str = "--") -> str:
    """Pydantic's first error as one sentence naming the field and the value given. With the prefix "--" the field
    is a command-line option (`--alpha 5.0: Input should be less than or equal to 1.`); with another prefix, an
    option of the Python API (`scoring option alpha = 5.0: …`)."""
    err = field_errors(exc)[0]
    if prefix == "--":
        return f"--{err.field.replace('_', '-')} {err.input}: {err.msg}."
    return f"{prefix}{err.field} = {err.input!r}: {err.msg}."

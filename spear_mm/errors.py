"""One exception type for every user-facing failure: a message that names the file/tensor and the fix."""

from __future__ import annotations


class SpearError(Exception):
    """A problem with the user's input or environment. The CLI prints the message and exits with code 2."""

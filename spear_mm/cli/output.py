"""The CLI's consoles: logs, errors and progress bars on stderr; results tables on stdout."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True)
out_console = Console()


def wide_console(width: int = 160) -> Console:
    """`out_console` on a terminal; in a log or CI a stdout console `width` wide (wide tables not squeezed to 80)."""
    return out_console if out_console.is_terminal else Console(width=width)

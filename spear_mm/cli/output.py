"""The CLI's two consoles: logs, errors and progress bars on stderr; results tables on stdout."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True)
out_console = Console()

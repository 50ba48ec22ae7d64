"""Shared console helpers for the CLI (rich stays in cli/ and report)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)


def error_line(message: str) -> None:
    """Print one red line on stderr: the whole of a user-facing error."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)


def warn_line(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def human_size(n: int | None) -> str:
    """Bytes as 1.2 GB, 3.4 MB, 5.6 kB or 7 B ("-" for unknown)."""
    if n is None:
        return "-"
    for unit, at in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= at:
            return f"{n / at:.1f} {unit}"
    return f"{n} B"


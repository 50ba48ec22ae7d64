"""`bt data ...` commands (placeholder until the data-store issue lands)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Import, inspect and remove market data.", no_args_is_help=True)

"""`bt hosts ...` commands (placeholder until the SSH issue lands)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Check the SSH hosts of a farm.", no_args_is_help=True)

"""The `bt` command line. Commands are thin: parse, call one library function, render.

Only this package and ``backtest.report`` import rich. Every sub-command module keeps heavy
imports (numpy, duckdb, pyarrow, numba) inside its functions so that ``bt --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from backtest.errors import BtError, UsageError


class _Group(TyperGroup):
    """Turns a BtError raised by any command into one red line and its exit code; anything else
    (a full disk, a path the system refused, an error in bt) into one line too, exit 1, unless
    BT_DEBUG is set, which shows the traceback."""

    def invoke(self, ctx: typer.Context) -> object:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except BtError as exc:
            from backtest.cli.render import error_line

            error_line(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            from backtest.cli.render import error_line

            error_line("interrupted")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            # whoever read the output has gone (bt ... | head): nothing to say, nowhere to say it;
            # what is still buffered goes nowhere. Exit 1, as click does when its own writes fail
            import os
            import sys

            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, sys.stdout.fileno())
            os.close(null)
            raise typer.Exit(1) from None
        except Exception as exc:  # a full disk, a refused path, a bug: one line, not a traceback
            import os

            if isinstance(exc, _endings()) or os.environ.get("BT_DEBUG"):
                raise  # how the command line ends or reports bad usage itself; or asked for the traceback
            from backtest.cli.render import error_line
            from backtest.errors import unexpected

            message, code = unexpected(exc)
            error_line(message)
            raise typer.Exit(code) from None


def _endings() -> tuple[type[BaseException], ...]:
    """The exceptions by which the command line ends, or reports bad usage, itself (typer's own
    since it carries its copy of click; click's with the typer versions that used it)."""
    kinds: list[type[BaseException]] = [typer.Exit, typer.Abort]
    if hasattr(typer, "TyperException"):
        kinds.append(typer.TyperException)
    try:
        import click
    except ImportError:
        return tuple(kinds)
    return (*kinds, click.ClickException, click.exceptions.Exit, click.exceptions.Abort)


app = typer.Typer(
    cls=_Group,
    name="bt",
    help="bt: a backtesting farm. Plan content-hashed shards, run them locally or over SSH, "
    "merge and report.\n\nStart with: bt data demo && bt run strategies/sma_cross.py --from 2020 --to 2024",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


@app.callback()
def _root(
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            envvar="BT_DATA",
            help="Root folder for bars, results and the catalog (default: the user data dir).",
            show_default=False,
        ),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            envvar="BT_STORE",
            help="Where the market data lives: s3://bucket/prefix (endpoint: BT_S3_ENDPOINT or "
            "?endpoint_override=http://host:port; region: BT_S3_REGION; credentials as for the AWS CLI) or "
            "another URI pyarrow.fs opens (file:///folder). Default: the bars under the data root.",
            show_default=False,
        ),
    ] = None,
) -> None:
    from backtest import paths

    paths.set_store(store)
    if data is not None and data.expanduser().exists() and not data.expanduser().is_dir():
        raise UsageError(f"--data {data} is a file; give the folder that holds (or will hold) bt's data")
    paths.set_root(data)


def _register() -> None:
    from backtest.cli import cache as cache_cli
    from backtest.cli import data as data_cli
    from backtest.cli import export as export_cli
    from backtest.cli import hosts as hosts_cli
    from backtest.cli import jobs as jobs_cli
    from backtest.cli import runs as runs_cli

    app.add_typer(data_cli.app, name="data")
    app.add_typer(hosts_cli.app, name="hosts")
    jobs_cli.register(app)
    runs_cli.register(app)
    export_cli.register(app)
    cache_cli.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point. Usage errors exit 2 (click), a BtError is one red line and its exit code, Ctrl+C 130."""
    _register()
    _defer_rich_markdown()
    app(args=argv)


def _defer_rich_markdown() -> None:
    """Format help and usage errors without importing ``rich.markdown``.

    typer imports ``rich.markdown`` (and with it markdown-it, ~40 ms of a ~0.25 s ``bt --help``)
    whenever it formats help or an error, for its "markdown" markup mode only; bt's is "rich". A
    stand-in takes the module's place until something really uses it: its ``Markdown`` makes real
    ones, and any other name loads the real module, which then replaces the stand-in."""
    import importlib
    import sys
    import types

    if "rich.markdown" in sys.modules:
        return
    import rich

    def real() -> types.ModuleType:
        if sys.modules.get("rich.markdown") is stand_in:
            del sys.modules["rich.markdown"]
        module = importlib.import_module("rich.markdown")
        rich.markdown = module
        return module

    def __getattr__(name: str) -> object:  # noqa: N807 - the module's own
        if name.startswith("__"):  # the import system's probes (__path__, ...): no reason to load
            raise AttributeError(name)
        return getattr(real(), name)

    class Markdown:
        def __new__(cls, *args: object, **kwargs: object) -> Any:
            return real().Markdown(*args, **kwargs)

    stand_in = types.ModuleType("rich.markdown", "Stands in for rich.markdown until it is used (bt.cli).")
    stand_in.Markdown = Markdown  # type: ignore[attr-defined]
    stand_in.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules["rich.markdown"] = stand_in
    rich.markdown = stand_in

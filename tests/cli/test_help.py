"""Every command has help; help is fast and leaves heavy modules (and markdown) unloaded."""

from __future__ import annotations

import textwrap

from helpers import loaded_by


def test_every_command_has_help() -> None:
    from typer.testing import CliRunner

    from backtest.cli import _register, app

    _register()
    runner = CliRunner()
    import click

    def walk(cmd: click.Command, path: list[str]) -> None:
        res = runner.invoke(app, [*path, "--help"])
        assert res.exit_code == 0, (path, res.output)
        assert "Usage" in res.output
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])
        else:
            assert cmd.help and len(cmd.help) > 20, f"{path} needs a docstring"

    import typer.main

    walk(typer.main.get_command(app), [])


def test_help_is_fast_and_does_not_import_heavy_modules() -> None:
    loaded, _ = loaded_by("import backtest.cli as c; c._register()",
                          ("numpy", "numba", "duckdb", "pyarrow", "pandas", "fabric", "mlflow"))
    assert loaded == []


def test_help_and_usage_errors_leave_markdown_unloaded_until_it_is_used() -> None:
    """typer imports rich.markdown to format help and errors, for a markup mode bt does not use:
    a stand-in defers it (backtest.cli._defer_rich_markdown), and the real module still works."""
    code = textwrap.dedent("""
        from backtest.cli import main
        for argv in (["--help"], ["run", "--help"], ["nosuchcmd"]):
            try:
                main(argv)
            except SystemExit:
                pass
        import sys
        print("before use:", "markdown_it" in sys.modules)
        from rich.console import Console
        from rich.markdown import Markdown
        console = Console(record=True, width=40)
        console.print(Markdown("# Title\\n\\n*some* text"))
        import rich.markdown
        print("after use:", "markdown_it" in sys.modules, isinstance(Markdown("x"), rich.markdown.Markdown),
              "some text" in console.export_text())
    """)
    loaded, printed = loaded_by(code, ("markdown_it",))
    assert "Usage" in printed  # (the usage error went to stderr)
    assert "before use: False" in printed and "after use: True True True" in printed
    assert loaded == ["markdown_it"]

"""Interrupting a real `bt run` process: Ctrl+C and SIGKILL, then resuming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from helpers import loaded_by, processes_with

from backtest.results import ResultStore


def bt_proc(root: Path, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, BT_DATA=str(root), COLUMNS="120")
    return subprocess.Popen([sys.executable, "-m", "backtest", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def wait_for_results(root: Path, n: int, proc: subprocess.Popen[str], limit: float = 60) -> None:
    store = ResultStore(root)
    t0 = time.monotonic()
    while len(store.keys()) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < limit
        time.sleep(0.05)


def test_ctrl_c_keeps_finished_results_then_resume(root: Path, faulty: Path) -> None:
    args = ["run", str(faulty), "--from", "2020", "--param", "n=3:10", "--param", "mode=slow", "-w", "2"]
    proc = bt_proc(root, *args)
    wait_for_results(root, 2, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in out + err and "Traceback" not in err
    kept = set(ResultStore(root).keys())
    assert 2 <= len(kept) < 24
    resumed = bt_proc(root, *args, "--json")
    out, err = resumed.communicate(timeout=120)
    summary = json.loads(out)
    assert summary["status"] == "done" and summary["cached"] == len(kept)
    assert summary["computed"] == 24 - len(kept)
    runs = bt_proc(root, "runs")
    out, _ = runs.communicate(timeout=60)
    assert "interrupted" in out


def test_coordinator_sigkill_then_resume(root: Path, faulty: Path) -> None:
    args = ["run", str(faulty), "--from", "2020", "--param", "n=3:10", "--param", "mode=slow", "-w", "2"]
    before = set(processes_with("backtest.worker"))
    proc = bt_proc(root, *args)
    wait_for_results(root, 3, proc)
    proc.kill()
    proc.communicate(timeout=30)
    # the workers (and their fork server) notice that their coordinator is gone, and end
    deadline = time.monotonic() + 15
    while set(processes_with("backtest.worker")) - before:
        assert time.monotonic() < deadline, "workers outlived their coordinator"
        time.sleep(0.1)
    # a worker may have been mid-write: its temporary file is never taken for a result, and
    # every stored result is whole
    kept = set(ResultStore(root).keys())
    assert kept and not [k for k in kept if k.startswith(".")]
    for k in kept:
        ResultStore(root).read(k)
    resumed = bt_proc(root, *args, "--json")
    out, err = resumed.communicate(timeout=120)
    summary = json.loads(out)
    assert summary["status"] == "done" and summary["computed"] + summary["cached"] == 24
    assert summary["cached"] >= len(kept)
    listing = bt_proc(root, "runs")
    out, _ = listing.communicate(timeout=60)
    assert "interrupted" in out  # the killed run is no longer shown as running


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
                          ("numpy", "numba", "duckdb", "pyarrow", "pandas", "fabric"))
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


def test_real_process_bad_input_exit_codes(root: Path, tmp_path: Path) -> None:
    for args, needle in ((["run", str(tmp_path / "nope.py")], "does not exist"),
                         (["report", "nosuch"], 'unknown run "nosuch"'),
                         (["run", "x.py", "--fill", "sometime"], "sometime")):
        proc = bt_proc(root, *args)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (args, out, err)
        assert needle in err and "Traceback" not in err


def test_two_runs_at_once_and_a_report_during_a_run(root: Path, faulty: Path) -> None:
    """Two real `bt run` processes on one root, and `bt report`/`bt runs` while they run."""
    a = bt_proc(root, "run", str(faulty), "--from", "2020", "--param", "n=3:8", "--param", "mode=slow", "-w", "1",
                "--json")
    b = bt_proc(root, "run", str(faulty), "--from", "2020", "--param", "n=9:14", "--param", "mode=slow", "-w", "1",
                "--json")
    wait_for_results(root, 2, a)
    listing = bt_proc(root, "runs")
    out, err = listing.communicate(timeout=60)
    assert listing.returncode == 0, err
    assert out.count("running") >= 1
    rid = out.split("faulty-")[1].split()[0]
    report = bt_proc(root, "report", f"faulty-{rid}", "--format", "json")
    rep_out, rep_err = report.communicate(timeout=60)
    assert report.returncode == 0, rep_err
    assert isinstance(json.loads(rep_out), list)
    sa = json.loads(a.communicate(timeout=180)[0])
    sb = json.loads(b.communicate(timeout=180)[0])
    assert sa["status"] == sb["status"] == "done"
    assert sa["computed"] == sb["computed"] == 18
    assert len(ResultStore(root).keys()) == 36

"""`bt data ...` through typer's CliRunner and through the real `bt` command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from datahelpers import make_bars, to_csv
from helpers import loaded_by
from typer.testing import CliRunner

from backtest import cli, paths

COMMANDS = ["import", "demo", "ls", "show", "rm", "verify"]


@pytest.fixture(scope="module")
def app():
    if not any(g.name == "data" for g in cli.app.registered_groups):
        cli._register()
    yield cli.app
    paths.set_root(None)


@pytest.fixture
def bt(app, tmp_path):
    runner = CliRunner()
    root = tmp_path / "root"

    def run(*args: str, input: str | None = None):
        return runner.invoke(app, ["--data", str(root), *args], input=input)

    return run


def _bt_process(root, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backtest", "--data", str(root), *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(bt, command):
    result = bt("data", command, "--help")
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and "bt data" in result.output


def test_import_ls_show_verify_rm(bt, write):
    path = write("aapl.csv", to_csv(make_bars(300, start="2019-06-03")))
    result = bt("data", "import", str(path))
    assert result.exit_code == 0, result.output
    assert "imported 1 file" in result.output and "AAPL" in result.output and "300" in result.output
    again = bt("data", "import", str(path))
    assert "0 of 2" in again.output  # no partition written the second time
    listing = bt("data", "ls")
    assert "AAPL" in listing.output and "2019-06-03" in listing.output and "1d" in listing.output
    rows = json.loads(bt("data", "ls", "--json").output)
    assert [(r["symbol"], r["rows"], r["partitions"]) for r in rows] == [("AAPL", 300, 2)]
    from backtest.data import Store

    parts = Store(paths.root()).partitions("AAPL")
    shown = bt("data", "show", "aapl", "--rows", "2")
    assert shown.exit_code == 0, shown.output
    assert parts[0].sha256[:12] in shown.output and "2019-06-03" in shown.output and "…" in shown.output
    assert "300 of 1d" in shown.output
    assert "all 2 partition files match" in bt("data", "verify").output
    kept = bt("data", "rm", "AAPL", input="n\n")
    assert "kept AAPL" in kept.output
    removed = bt("data", "rm", "AAPL", "--yes")
    assert "removed AAPL" in removed.output
    assert "is empty" in " ".join(bt("data", "ls").output.split())  # the console wraps long paths


def test_import_options_reach_the_library(bt, write):
    text = "Date,Open,Close,High,Low,Volume\r\n11/5/2019 9:30,10,10.5,11,9.5,0\r\n11/5/2019 9:31,10,10.5,11,9.5,0\r\n"
    result = bt("data", "import", str(write("idx.csv", text, bom=True)), "--symbol", "spx", "--tz", "America/New_York")
    assert result.exit_code == 0, result.output
    assert "SPX" in result.output and "2019-11-05 14:30" in result.output
    trades = "time,price,size\n2020-01-02 14:30:01,10,1\n2020-01-02 14:30:59,11,2\n2020-01-02 14:31:00,9,3\n"
    result = bt("data", "import", str(write("t.csv", trades)), "--symbol", "T", "--bars", "1min")
    assert result.exit_code == 0, result.output
    assert "aggregated 3 trades into 2 bars of 1min" in result.output


def test_errors_are_one_line_and_exit_2(bt, write):
    bt("data", "import", str(write("aapl.csv", to_csv(make_bars(5)))))
    result = bt("data", "show", "APPL")
    assert result.exit_code == 2
    assert result.output.strip() == 'error: unknown symbol "APPL". Did you mean "AAPL"?'
    result = bt("data", "rm", "AAPL", "APPL", "--yes")  # nothing is removed when one name is wrong
    assert result.exit_code == 2 and "AAPL" in bt("data", "ls").output
    result = bt("data", "import", str(write("x.csv", "a,b\n1,2\n")), "--tz", "Mars/Olympus")
    assert result.exit_code == 2 and 'unknown time zone "Mars/Olympus"' in result.output


def test_demo_command(bt):
    result = bt("data", "demo", "--symbols", "2", "--from", "2024", "--to", "2024")
    assert result.exit_code == 0, result.output
    assert "wrote 2 demo symbols (DEMO00 … DEMO01)" in result.output
    assert [r["symbol"] for r in json.loads(bt("data", "ls", "--json").output)] == ["DEMO00", "DEMO01"]


def test_real_bt_process_exit_codes_and_one_line_errors(tmp_path, write):
    root = tmp_path / "root"
    good = write("good.csv", to_csv(make_bars(5)))
    bad = write("bad.csv", "date,open,high,low,close\n2020-01-02,10,9,11,10\n")
    out = _bt_process(root, "data", "import", str(bad))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: {bad}: line 2: high 9 is below low 11; fix the row, or pass --repair to widen high and low to "
        f"contain open and close"]
    out = _bt_process(root, "data", "import", str(good), str(bad))
    assert out.returncode == 2 and "GOOD" in out.stdout
    assert "bad.csv: line 2: high 9 is below low 11" in out.stderr
    assert "1 of 2 files were not imported" in out.stderr
    out = _bt_process(root, "data", "ls")
    assert out.returncode == 0 and "GOOD" in out.stdout and "BAD" not in out.stdout


def test_the_data_commands_do_not_import_heavy_modules():
    loaded, _ = loaded_by("import backtest.cli.data", ("numpy", "pyarrow", "duckdb", "pandas", "backtest.data"))
    assert loaded == []

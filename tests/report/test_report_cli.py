"""`bt report` as a new user tries it: formats from --out, typed --params, --top everywhere, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import bt


@pytest.mark.parametrize(("name", "check"), [
    ("r.csv", lambda p: p.read_text().splitlines()[0].startswith('"key","symbol","status"')),
    ("r.json", lambda p: len(json.loads(p.read_text())) == 36),
    ("r.parquet", lambda p: pq.read_table(p).num_rows == 36),
    ("r.txt", lambda p: "top 10 by sharpe" in p.read_text() and "best parameters per symbol" in p.read_text()),
])
def test_out_picks_the_format_from_its_suffix(reported: tuple[Path, str], tmp_path: Path, name: str, check: object) -> None:
    root, rid = reported
    out = tmp_path / name
    code, _, err = bt("--data", root, "report", rid, "--out", out)
    assert code == 0, err
    assert out.exists() and check(out)  # type: ignore[operator]


def test_format_and_suffix_that_disagree_are_refused(reported: tuple[Path, str], tmp_path: Path) -> None:
    root, rid = reported
    code, _, err = bt("--data", root, "report", rid, "--format", "json", "--out", tmp_path / "r.csv")
    assert code == 2 and "make them agree" in err


def test_params_compare_typed_values(reported: tuple[Path, str]) -> None:
    root, rid = reported
    # scale is stored as 1.0; fast as 10
    for text in ("fast=10,slow=30,scale=1", "fast=10.0,slow=30,scale=1.0"):
        code, out, err = bt("--data", root, "report", rid, "--symbol", "AAA", "--params", text, "--format", "json")
        assert code == 0, err
        rows = json.loads(out)
        assert len(rows) == 1 and rows[0]["params"] == {"fast": 10, "slow": 30, "scale": 1.0}


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_top_limits_exports_too(reported: tuple[Path, str], fmt: str) -> None:
    root, rid = reported
    code, out, err = bt("--data", root, "report", rid, "--top", "3", "--format", fmt)
    assert code == 0, err
    n = len(json.loads(out)) if fmt == "json" else len(out.strip().splitlines()) - 1
    assert n == 3


def test_a_filtered_table_does_not_call_other_tasks_not_run(reported: tuple[Path, str]) -> None:
    root, rid = reported
    code, out, err = bt("--data", root, "report", rid, "--symbol", "AAA")
    text = " ".join(out.split())
    assert code == 0 and "not run" not in text and "showing 12 of 36" in text
    assert "range: 2019-06-01 to 2021-12-31" in text and "grid: 12 parameter sets" in text
    assert "cash 100,000, no costs, fill next-open, fractional units" in text


def test_trades_show_minutes_and_time_zones(reported: tuple[Path, str]) -> None:
    root, rid = reported
    sel = ("--symbol", "AAA", "--params", "fast=5,slow=20", "--trades")
    utc = json.loads(bt("--data", root, "report", rid, *sel, "--format", "json")[1])
    ny = json.loads(bt("--data", root, "report", rid, *sel, "--format", "json", "--tz", "America/New_York")[1])
    assert utc[0]["entry_time"].endswith("T21:00:00Z")  # the bars close at 21:00 UTC
    assert ny[0]["entry_time"][11:] in ("16:00:00-05:00", "17:00:00-04:00")
    code, out, _ = bt("--data", root, "report", rid, *sel)
    assert code == 0 and "21:00" in out


@pytest.mark.parametrize(("args", "message"), [
    (["--format", "html", "--x", "fsat"], '--x fsat: not a parameter of this run. Did you mean "fast"?'),
    (["--format", "html", "--x", "scale"], "--x scale: the parameter has one value in this run"),
    (["--format", "html", "--metric", "sharp"], 'unknown metric "sharp" for --metric. Did you mean "sharpe"?'),
    (["--format", "html", "--symbol", "AAA"], "the HTML report covers the whole run"),
    (["--equity"], "--equity needs exactly one task; --symbol/--params select 36"),
    (["--equity", "--symbol", "BBB", "--params", "fast=15,slow=50"], "that task failed; it has no equity"),
    (["--equity", "--trades"], "give one of them"),
    (["--tz", "Mars/Olympus"], '--tz "Mars/Olympus" is not a time zone'),
    (["--charts", "-1"], "--charts must be 0 or more"),
    (["--format", "html", "--out", "{tmp}/no/such/r.html"], "the folder {tmp}/no/such does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(reported: tuple[Path, str], tmp_path: Path, args: list[str], message: str) -> None:
    root, rid = reported
    code, out, err = bt("--data", root, "report", rid, *(a.format(tmp=tmp_path) for a in args))
    assert code == 2, (out, err)
    assert message.format(tmp=tmp_path) in " ".join(err.split()) and "Traceback" not in out + err


def test_unwritable_out_and_unknown_run(reported: tuple[Path, str], tmp_path: Path) -> None:
    root, rid = reported
    if os.geteuid() != 0:  # root writes anywhere; the check is still exercised by the missing folder above
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, _, err = bt("--data", root, "report", rid, "--format", "html", "--out", locked / "r.html")
        assert code == 2 and "is not writable" in err
    code, out, err = bt("--data", root, "report", "nosuchrun-000000", "--format", "html")
    assert code == 2 and 'unknown run "nosuchrun-000000"' in " ".join(err.split()) and "Traceback" not in out + err


def test_runs_says_what_each_run_ran_without_cutting_it(reported: tuple[Path, str]) -> None:
    root, rid = reported
    code, out, err = bt("--data", root, "runs")
    text = " ".join(out.split())
    assert code == 0, err
    assert rid in text and "Crossing" in text and "…" not in out
    # each symbol named (three or fewer), the range from its first day to its last, the 12 parameter sets
    assert all(s in text for s in ("AAA,", "BBB,", "CCC", "2019-06-01", "2021-12-31", " 12 36 0 1 failed"))


def test_open_hands_the_written_file_to_the_browser(reported: tuple[Path, str], tmp_path: Path) -> None:
    """--open goes through Python's webbrowser, which runs $BROWSER with the file's URL: a real
    process here (a script that records what it was given), as a desktop's browser would be."""
    root, rid = reported
    seen = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\nprintf "%s" "$1" > {seen}\n')
    browser.chmod(0o755)
    out = tmp_path / "r.html"
    env = dict(os.environ, BROWSER=str(browser))
    done = subprocess.run([sys.executable, "-m", "backtest", "--data", str(root), "report", rid, "--format", "html",
                           "--out", str(out), "--charts", "1", "--open"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    for _ in range(50):  # webbrowser may start the command without waiting for it
        if seen.exists():
            break
        time.sleep(0.1)
    assert seen.read_text() == out.resolve().as_uri()

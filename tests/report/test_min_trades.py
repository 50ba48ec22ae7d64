"""``bt report --min-trades N``: tasks with fewer trades stay in every output, flagged, and rank
after every eligible task (so a one-trade fluke never heads the leaderboard)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from helpers import bt_in as bt
from helpers import run_json


def _grid(root: Path, sma_path: Path) -> str:
    return run_json(root, sma_path, "--from", "2019", "--to", "2021", "-p", "fast=5:30:5", "-p", "slow=40,80,160")["run_id"]


def test_ineligible_tasks_rank_last_and_are_flagged(root: Path, sma_path: Path) -> None:
    run_id = _grid(root, sma_path)
    code, out, err = bt(root, "report", run_id, "--format", "json", "--sort", "sortino")
    assert code == 0, err
    plain = json.loads(out)
    counts = sorted(r["metrics"]["trades"] for r in plain)
    cut = int(counts[len(counts) // 2])  # about half the tasks fall below it
    assert counts[0] < cut
    code, out, err = bt(root, "report", run_id, "--format", "json", "--sort", "sortino", "--min-trades", cut)
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == len(plain)  # nothing dropped
    flags = [r["eligible"] for r in rows]
    assert flags == sorted(flags, reverse=True) and True in flags and False in flags  # eligible first
    assert all(r["eligible"] == (r["metrics"]["trades"] >= cut) for r in rows)
    eligible = [r for r in rows if r["eligible"]]
    assert [r["key"] for r in eligible] == [r["key"] for r in plain if r["metrics"]["trades"] >= cut]
    # the same ranking from every path: the csv export, the in-memory export (--symbol), the table
    code, out, err = bt(root, "report", run_id, "--format", "csv", "--sort", "sortino", "--min-trades", cut)
    assert [r["key"] for r in csv.DictReader(io.StringIO(out))] == [r["key"] for r in rows]
    sym = rows[-1]["symbol"]
    code, out, err = bt(root, "report", run_id, "--format", "json", "--sort", "sortino", "--min-trades", cut,
                        "--symbol", sym)
    assert [r["key"] for r in json.loads(out)] == [r["key"] for r in rows if r["symbol"] == sym]
    code, out, err = bt(root, "report", run_id, "--sort", "sortino", "--min-trades", 10_000, "--top", 3)
    assert code == 0 and "fast=" in out and " *" in out and "* fewer trades than --min-trades" in out, err


def test_bad_min_trades_is_one_line(root: Path, sma_path: Path) -> None:
    run_id = _grid(root, sma_path)
    code, out, err = bt(root, "report", run_id, "--min-trades", "-3")
    assert code == 2 and err.strip() == "error: --min-trades must be 0 or more, not -3"


def test_the_html_leaderboard_says_which_tasks_are_not_eligible(root: Path, sma_path: Path, tmp_path: Path) -> None:
    run_id = _grid(root, sma_path)
    page = tmp_path / "r.html"
    code, out, err = bt(root, "report", run_id, "--format", "html", "--out", page, "--charts", "1", "--min-trades", 10_000)
    assert code == 0, err
    assert "no: too few trades" in page.read_text()
    code, out, err = bt(root, "report", run_id, "--format", "html", "--out", page, "--charts", "1")
    assert code == 0 and "too few trades" not in page.read_text(), err

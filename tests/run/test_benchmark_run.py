"""``bt run --benchmark SYM``: every task compared with a symbol of the store, its partitions part of
the task keys; the report shows the metrics and the HTML draws the benchmark; bad input in one line."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from helpers import bt_in as bt
from helpers import run_json, synth_daily

RANGE = ("--from", "2019-06", "--to", "2021")
GRID = ("-p", "fast=5,10", "-p", "slow=30")


def keys(root: Path, run_id: str) -> set[str]:
    code, out, err = bt(root, "report", run_id, "--format", "json")
    assert code == 0, err
    return {r["key"] for r in json.loads(out)}


def test_benchmark_metrics_keys_and_reports(root: Path, sma_path: Path, tmp_path: Path) -> None:
    plain = run_json(root, sma_path, *RANGE, *GRID, "-s", "AAA,BBB")
    vs_c = run_json(root, sma_path, *RANGE, *GRID, "-s", "AAA,BBB", "--benchmark", "ccc")
    assert vs_c["computed"] == 4  # the comparison is part of what a task is: computed, not found
    again = run_json(root, sma_path, *RANGE, *GRID, "-s", "AAA,BBB", "--benchmark", "CCC")
    assert again["cached"] == 4 and again["computed"] == 0
    vs_a = run_json(root, sma_path, *RANGE, *GRID, "-s", "BBB", "--benchmark", "AAA")
    assert not keys(root, plain["run_id"]) & keys(root, vs_c["run_id"])
    assert not keys(root, vs_a["run_id"]) & keys(root, vs_c["run_id"])

    code, out, err = bt(root, "report", vs_c["run_id"], "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert all(float(r["beta"]) == float(r["beta"]) and r["benchmark_return"] for r in rows)
    assert len({r["benchmark_return"] for r in rows}) == 1  # the same bars for every task
    code, out, err = bt(root, "report", plain["run_id"], "--format", "csv")
    assert "beta" not in out.splitlines()[0]  # no comparison, no columns
    code, out, err = bt(root, "report", vs_c["run_id"])
    assert code == 0 and "benchmark: CCC" in out, err
    html = tmp_path / "r.html"
    code, out, err = bt(root, "report", vs_c["run_id"], "--format", "html", "--out", html, "--charts", "1")
    assert code == 0, err
    page = html.read_text()
    assert "benchmark CCC" in page and "against CCC" in page
    code, out, err = bt(root, "verify", vs_c["run_id"])
    assert code == 0, err + out


def test_new_benchmark_data_changes_the_keys(root: Path, sma_path: Path) -> None:
    from backtest.data import Store

    first = run_json(root, sma_path, *RANGE, *GRID, "-s", "AAA", "--benchmark", "CCC")
    ts, o, h, lo, c, v = synth_daily(2)
    Store(root).import_arrays("CCC", ts, o * 1.01, h * 1.01, lo * 1.01, c * 1.01, v, replace=True)
    second = run_json(root, sma_path, *RANGE, *GRID, "-s", "AAA", "--benchmark", "CCC")
    assert second["computed"] == 2 and not keys(root, first["run_id"]) & keys(root, second["run_id"])


def test_walk_forward_and_portfolio_runs_take_a_benchmark(root: Path, sma_path: Path) -> None:
    wf = run_json(root, sma_path, "--from", "2019", "--to", "2021", *GRID, "-s", "AAA",
                  "--walk-forward", "train=1y,test=6m", "--benchmark", "BBB")
    code, out, err = bt(root, "report", wf["run_id"])
    assert code == 0, err
    code, out, err = bt(root, "verify", wf["run_id"])
    assert code == 0, err + out
    xs = Path(__file__).resolve().parents[2] / "strategies" / "inverse_vol.py"
    pf = run_json(root, xs, *RANGE, "-s", "AAA,BBB", "--benchmark", "CCC")
    code, out, err = bt(root, "report", pf["run_id"], "--format", "json")
    assert all("alpha" in r["metrics"] for r in json.loads(out))


def test_bad_benchmarks_are_one_line(root: Path, sma_path: Path) -> None:
    for value, says in (("AAB", 'unknown symbol "AAB". Did you mean'), ("", "--benchmark is empty")):
        code, out, err = bt(root, "run", sma_path, "-s", "AAA", "--benchmark", value)
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    code, out, err = bt(root, "run", sma_path, "-s", "AAA", "--from", "2030", "--benchmark", "BBB")
    assert code == 2 and "Traceback" not in err, err

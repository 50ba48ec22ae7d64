"""Managing recorded runs: bt runs rm, bt gc, bt compare. Real runs in a real catalog and store."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import duckdb
from helpers import bt

from backtest.store.results import ResultStore


def run(root: Path, sma: Path, *extra: str) -> str:
    code, out, err = bt("--data", root, "run", sma, "--from", "2021", "--param", "fast=5,10", "--param", "slow=20",
                        "--executor", "inline://", "--json", *extra)
    assert code == 0, err
    return str(json.loads(out)["run_id"])


def test_rm_then_gc_frees_only_results_no_run_refers_to(root: Path, sma_path: Path) -> None:
    kept = run(root, sma_path)
    gone = run(root, sma_path, "--commission", "0.001")
    store = ResultStore(root)
    assert len(store.keys()) == 12  # 3 symbols x 2 sets, twice
    code, out, _ = bt("--data", root, "gc", "--dry-run")
    assert code == 0 and "would delete 0 result(s)" in " ".join(out.split())
    code, out, err = bt("--data", root, "runs", "rm", gone)
    assert code == 0 and f"removed run {gone}" in out, err
    code, out, _ = bt("--data", root, "gc", "--dry-run")
    assert "would delete 6 result(s)" in " ".join(out.split()) and len(store.keys()) == 12  # a dry run deletes nothing
    code, out, _ = bt("--data", root, "gc")
    assert code == 0 and "deleted 6 result(s)" in " ".join(out.split())
    assert len(store.keys()) == 6
    # the kept run is whole: its report works and a rerun is all cached
    assert bt("--data", root, "report", kept, "--format", "json")[0] == 0
    code, out, _ = bt("--data", root, "run", sma_path, "--from", "2021", "--param", "fast=5,10", "--param", "slow=20",
                      "--executor", "inline://", "--json")
    assert json.loads(out)["cached"] == 6
    # the removed run's job computes again from nothing
    code, out, _ = bt("--data", root, "run", sma_path, "--from", "2021", "--param", "fast=5,10", "--param",
                      "slow=20", "--commission", "0.001", "--executor", "inline://", "--json")
    assert json.loads(out)["computed"] == 6
    code, out, err = bt("--data", root, "runs", "rm", gone)
    assert code == 2 and f'unknown run "{gone}"' in " ".join(err.split())


def test_a_live_run_is_neither_removed_nor_swept_under(root: Path, sma_path: Path) -> None:
    rid = run(root, sma_path)
    con = duckdb.connect(str(root / "catalog.duckdb"))  # as a coordinator that is still at it records it
    con.execute("UPDATE runs SET status = 'running', pid = ?, host = ? WHERE run_id = ?",
                [os.getpid(), socket.gethostname(), rid])
    con.close()
    code, _, err = bt("--data", root, "runs", "rm", rid)
    assert code == 2 and "is still running" in err
    code, _, err = bt("--data", root, "gc")
    assert code == 2 and "is going on" in err
    code, out, err = bt("--data", root, "runs", "rm", rid, "--force")
    assert code == 0, err


def test_compare_names_what_differs_and_how_metrics_moved(root: Path, sma_path: Path) -> None:
    a = run(root, sma_path)
    b = run(root, sma_path, "--commission", "0.01")
    c = run(root, sma_path, "--symbols", "AAA")
    code, out, err = bt("--data", root, "compare", a, b, "--json")
    assert code == 0, err
    got = json.loads(out)
    assert got["differs"] == [{"what": "settings.commission", "a": 0.0, "b": 0.01}]
    assert got["shared"] == 0 and got["matched"] == 6
    tr = next(m for m in got["metrics"] if m["metric"] == "total_return")
    assert tr["tasks"] == 6 and tr["median_change"] < 0  # costs lower returns
    code, out, err = bt("--data", root, "compare", a, c, "--json")
    got = json.loads(out)
    assert got["shared"] == 2 and got["matched"] == 0  # AAA's two tasks are the same results
    assert got["differs"][0]["what"] == "symbols"
    code, out, _ = bt("--data", root, "compare", a, b)
    assert code == 0 and "settings.commission" in out and "median change" in out
    code, _, err = bt("--data", root, "compare", a, a)
    assert code == 2 and "compare two different runs" in err

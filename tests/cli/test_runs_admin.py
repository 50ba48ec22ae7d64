"""Managing recorded runs: latest, bt runs (and rm), bt gc, bt compare. Real runs in a real catalog
and results store (inline executor, 3 symbols x 2 parameter sets)."""

from __future__ import annotations

import io
import json
import os
import socket
from pathlib import Path

import duckdb
import pytest
from helpers import bt
from rich.console import Console

from backtest.store.results import ResultStore

GRID = ("--from", "2021", "--param", "fast=5,10", "--param", "slow=20", "--executor", "inline://", "--json")


def run(root: Path, sma: Path, *extra: str) -> str:
    code, out, err = bt("--data", root, "run", sma, *GRID, *extra)
    assert code == 0, err
    return str(json.loads(out)["run_id"])


def rerun(root: Path, sma: Path, *extra: str) -> dict:
    code, out, err = bt("--data", root, "run", sma, *GRID, *extra)
    assert code == 0, err
    return dict(json.loads(out))


def words(text: str) -> str:
    """``text`` with its line breaks (rich wraps at 80 columns) as single spaces."""
    return " ".join(text.split())


def sql(root: Path, query: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(root / "catalog.duckdb"))  # as another process would
    try:
        return con.execute(query, params or []).fetchall()
    finally:
        con.close()


def mark_running(root: Path, run_id: str) -> None:
    """Record ``run_id`` as a run still going on, whose coordinator is this (live) process."""
    sql(root, "UPDATE runs SET status = 'running', pid = ?, host = ? WHERE run_id = ?",
        [os.getpid(), socket.gethostname(), run_id])


# latest ------------------------------------------------------------------------------------------


def test_latest_is_the_newest_run_for_every_command(root: Path, sma_path: Path) -> None:
    first = run(root, sma_path)
    newest = run(root, sma_path, "--commission", "0.001")
    code, out, err = bt("--data", root, "report", "latest", "--format", "json")
    assert code == 0, err
    newest_keys = {k for (k,) in sql(root, "SELECT key FROM run_tasks WHERE run_id = ?", [newest])}
    assert {r["key"] for r in json.loads(out)} == newest_keys
    code, out, _ = bt("--data", root, "logs", "latest")
    assert code == 0 and newest in out
    code, out, _ = bt("--data", root, "verify", "latest")
    assert code == 0 and f"run {newest}" in words(out)
    # an ambiguous prefix still lists the runs it begins, newest first
    code, _, err = bt("--data", root, "report", "sma_cross")
    assert code == 2 and f"ambiguous: it begins 2 run ids ({newest}, {first})" in words(err)


def test_latest_and_any_run_id_with_no_runs_is_one_line(root: Path) -> None:
    for args in (("report", "latest"), ("verify", "latest"), ("logs", "latest"), ("compare", "latest", "latest"),
                 ("runs", "rm", "latest")):
        code, out, err = bt("--data", root, *args)
        assert code == 2, args
        assert words(err) == ("error: no runs recorded yet, so there is no latest run; start one with: "
                              "bt run STRATEGY.py"), args
    code, _, err = bt("--data", root, "report", "sma_cross-abc123")
    assert code == 2 and 'unknown run "sma_cross-abc123": no runs recorded yet' in words(err)
    code, out, _ = bt("--data", root, "runs")
    assert code == 0 and "no runs yet" in out


# bt runs ------------------------------------------------------------------------------------------


def test_runs_lists_what_each_run_ran(root: Path, sma_path: Path) -> None:
    whole = run(root, sma_path)
    part = run(root, sma_path, "--symbols", "AAA,BBB", "--to", "2021-06-30")
    code, out, err = bt("--data", root, "runs")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) <= 1 + 1 + 2 * 2 and all(len(line) <= 80 for line in lines)
    assert lines[1].split() == ["run", "symbols", "range", "sets", "tasks", "cached", "failed", "status", "time",
                                "when"]
    # newest first; each run on two lines, its strategy under its id; a range of days on two lines
    assert lines[2].split()[:3] == [part, "AAA,", "BBB"] and lines[2].split()[3:9] == ["2021-01-01", "2", "4", "0",
                                                                                        "0", "done"]
    assert lines[3].split()[:2] == ["SmaCross", "2021-06-30"]
    assert lines[4].split()[:9] == [whole, "AAA,", "BBB,", "2021–", "2", "6", "0", "0", "done"]  # from 2021 on
    assert lines[5].split()[:2] == ["SmaCross", "CCC"]
    assert "…" not in out
    code, out, _ = bt("--data", root, "runs", "--limit", "1")
    assert code == 0 and part in out and whole not in out
    code, _, err = bt("--data", root, "runs", "--limit", "0")
    assert code == 2 and "--limit must be at least 1" in err


def test_runs_table_fits_80_columns_and_never_cuts_the_strategy_name(root: Path, sma_path: Path) -> None:
    from backtest.catalog import Catalog
    from backtest.cli.runs import render_runs

    run(root, sma_path)
    rows = Catalog(root / "catalog.duckdb").runs(5)
    # a long strategy file name and class, and many symbols
    long = dict(rows[0], run_id="bollinger_reversion_long-0e5d98", strategy="BollingerReversionLong")
    for width in (80, 100, 200):
        buf = io.StringIO()
        Console(file=buf, width=width, force_terminal=False).print(render_runs([*rows, long], root, width))
        out = buf.getvalue()
        assert all(len(line.rstrip()) <= width for line in out.splitlines()), out
        assert "…" not in out and "BollingerReversionLong" in out and "SmaCross" in out
        if width == 200:  # room for everything on one line a run, the strategy in a column of its own
            assert len(out.splitlines()) == 2 + 2
            assert out.splitlines()[1].split()[:2] == ["run", "strategy"]


def test_runs_of_rows_without_a_scope_read_the_job_file_or_show_a_dash(root: Path, sma_path: Path) -> None:
    """Rows recorded before the catalog kept a run's scope: what ran comes from the job file, and a
    dash where that is gone too."""
    import duckdb

    rid = run(root, sma_path)
    code, kept, err = bt("--data", root, "runs")
    assert code == 0, err
    (job_hash,) = sql(root, "SELECT job_hash FROM runs WHERE run_id = ?", [rid])[0]
    with duckdb.connect(str(root / "catalog.duckdb")) as con:
        con.execute("UPDATE runs SET scope = NULL")
    code, out, err = bt("--data", root, "runs")
    assert code == 0 and out == kept, err
    (root / "jobs" / f"{job_hash}.json").unlink()
    code, out, err = bt("--data", root, "runs")
    assert code == 0, err
    assert rid in out and "– –" in words(out)  # symbols, range (and grid size) unknown; the rest shown


# bt runs rm ---------------------------------------------------------------------------------------


def test_runs_rm_forgets_runs_but_not_their_results(root: Path, sma_path: Path) -> None:
    kept = run(root, sma_path)
    gone = run(root, sma_path, "--commission", "0.001")
    code, out, err = bt("--data", root, "runs", "rm", gone[:-1])  # a unique prefix works
    assert code == 0, err
    assert f"removed run {gone} (SmaCross, done): 6 task outcome(s), 0 log entries" in words(out)
    assert "6 result(s) no run refers to any more: bt gc deletes them" in words(out)
    assert sql(root, "SELECT count(*) FROM run_tasks WHERE run_id = ?", [gone]) == [(0,)]
    assert sql(root, "SELECT count(*) FROM runs WHERE run_id = ?", [gone]) == [(0,)]
    assert len(ResultStore(root).keys()) == 12  # results stay until bt gc
    code, _, err = bt("--data", root, "runs", "rm", gone)
    assert code == 2 and f'unknown run "{gone}"' in words(err)
    # every id is checked before anything is removed
    code, _, err = bt("--data", root, "runs", "rm", kept, "nope")
    assert code == 2 and 'unknown run "nope"' in words(err)
    assert sql(root, "SELECT run_id FROM runs") == [(kept,)]
    code, out, _ = bt("--data", root, "runs", "rm", "latest")  # its results are no run's now
    assert code == 0 and f"removed run {kept}" in out and "6 result(s) no run refers to" in words(out)


def test_a_live_run_is_neither_removed_nor_swept_under(root: Path, sma_path: Path) -> None:
    rid = run(root, sma_path)
    mark_running(root, rid)  # its coordinator, this process, is alive
    code, _, err = bt("--data", root, "runs", "rm", rid)
    assert code == 2 and words(err).startswith(f"error: run {rid} is still running (pid {os.getpid()} on")
    assert "--force" in err and len(err.strip().splitlines()) <= 2  # one line (wrapped at 80 columns)
    code, _, err = bt("--data", root, "gc")
    assert code == 2 and f"run {rid} is still running" in words(err) and "bt gc deletes nothing" in words(err)
    code, out, err = bt("--data", root, "gc", "--dry-run")  # looking is allowed, with a warning
    assert code == 0 and f"run {rid} is going on" in words(err)
    assert len(ResultStore(root).keys()) == 6
    code, out, err = bt("--data", root, "runs", "rm", rid, "--force")
    assert code == 0 and f"removed run {rid} (SmaCross, running)" in words(out), err


def test_a_run_whose_coordinator_died_is_no_longer_running(root: Path, sma_path: Path) -> None:
    rid = run(root, sma_path)
    sql(root, "UPDATE runs SET status = 'running', pid = ?, host = ? WHERE run_id = ?",
        [2**22 + 12345, socket.gethostname(), rid])  # no such process
    code, out, err = bt("--data", root, "runs", "rm", rid)
    assert code == 0 and f"removed run {rid}" in out, err


# bt gc --------------------------------------------------------------------------------------------


def test_gc_deletes_only_results_no_run_refers_to(root: Path, sma_path: Path) -> None:
    kept = run(root, sma_path)
    gone = run(root, sma_path, "--commission", "0.001")
    store = ResultStore(root)
    assert len(store.keys()) == 12  # 3 symbols x 2 sets, twice
    code, out, _ = bt("--data", root, "gc", "--dry-run")
    assert code == 0 and "nothing to delete" in out
    gone_keys = {k for (k,) in sql(root, "SELECT key FROM run_tasks WHERE run_id = ?", [gone])}
    assert bt("--data", root, "runs", "rm", gone)[0] == 0

    code, out, _ = bt("--data", root, "gc", "--dry-run")
    size = store.sizes(gone_keys)
    assert code == 0 and f"would delete 6 result(s) no run refers to ({size / 1e3:.1f} kB)" in words(out)
    listed = [line.strip() for line in out.splitlines() if line.startswith("  ") and "more" not in line]
    assert len(listed) == 5 and set(listed) <= gone_keys and "and 1 more" in out
    assert "nothing was deleted (dry run)" in words(out)
    assert len(store.keys()) == 12  # a dry run deletes nothing
    assert sql(root, "SELECT count(*) FROM results") == [(12,)]

    code, out, _ = bt("--data", root, "gc")
    assert code == 0 and "deleted 6 result(s) no run refers to" in words(out)
    assert set(store.keys()) == {k for (k,) in sql(root, "SELECT key FROM run_tasks")}  # the kept run's
    assert sql(root, "SELECT count(*) FROM results WHERE key IN (SELECT key FROM run_tasks)") == [(6,)]
    assert sql(root, "SELECT count(*) FROM results") == [(6,)]
    code, out, _ = bt("--data", root, "gc")
    assert code == 0 and "nothing to delete" in out
    # the kept run is whole: its report works, and its rerun is all cached
    assert bt("--data", root, "report", kept, "--format", "json")[0] == 0
    assert rerun(root, sma_path)["cached"] == 6
    # the removed run's job computes again
    again = rerun(root, sma_path, "--commission", "0.001")
    assert (again["computed"], again["cached"]) == (6, 0)
    assert set(store.keys()) >= gone_keys


def test_gc_removes_damaged_files_set_aside_and_says_so(root: Path, sma_path: Path) -> None:
    run(root, sma_path)
    store = ResultStore(root)
    key = store.keys()[0]
    aside = store.set_aside(key)  # as a run does with a damaged file
    code, out, _ = bt("--data", root, "gc", "--dry-run")
    assert code == 0 and "would delete 0 result(s)" in words(out)
    assert "would delete 1 damaged result file(s) set aside" in words(out) and aside.name in out
    assert aside.exists()
    code, out, _ = bt("--data", root, "gc")
    assert code == 0 and "deleted 1 damaged result file(s) set aside" in words(out)
    assert not aside.exists() and len(store.keys()) == 5
    assert rerun(root, sma_path)["computed"] == 1  # its task computes again


def test_gc_without_a_catalog_refuses_to_delete_every_result(root: Path, sma_path: Path) -> None:
    run(root, sma_path)
    (root / "catalog.duckdb").unlink()
    code, _, err = bt("--data", root, "gc")
    assert code == 2 and "there is no catalog" in words(err) and "would delete them all" in words(err)
    assert len(ResultStore(root).keys()) == 6


# bt compare ---------------------------------------------------------------------------------------


def compare_json(root: Path, a: str, b: str) -> dict:
    code, out, err = bt("--data", root, "compare", a, b, "--format", "json")
    assert code == 0, err
    return dict(json.loads(out))


def test_compare_two_runs_with_one_parameter_changed(root: Path, sma_path: Path) -> None:
    a = run(root, sma_path)  # fast 5, 10
    code, out, err = bt("--data", root, "run", sma_path, "--from", "2021", "--param", "fast=5,15", "--param",
                        "slow=20", "--executor", "inline://", "--json")
    b = json.loads(out)["run_id"]
    got = compare_json(root, a, "latest")
    assert (got["a"]["run_id"], got["b"]["run_id"]) == (a, b)
    assert got["differences"] == [{"field": "param.fast", "a": [5, 10], "b": [5, 15]}]
    # fast=5 is the same task in both (the same key); fast=10 and fast=15 are in one run each
    assert got["tasks"] == {"shared": 3, "matched": 0, "only_a": 3, "only_b": 3}
    assert all(m["count"] == 0 and m["median_diff"] is None for m in got["metrics"])
    code, out, _ = bt("--data", root, "compare", a, b)
    assert code == 0
    assert "grid: fast 5, 10 5, 15" in words(out) and "3 shared (the same key: the same result)" in words(out)
    assert "median difference" not in out  # nothing computed differently: no metric table


def test_compare_two_runs_with_other_settings(root: Path, sma_path: Path) -> None:
    a = run(root, sma_path)
    b = run(root, sma_path, "--commission", "0.01")
    got = compare_json(root, a, b)
    assert got["differences"] == [{"field": "settings.commission", "a": 0.0, "b": 0.01}]
    assert got["tasks"] == {"shared": 0, "matched": 6, "only_a": 0, "only_b": 0}
    metrics = {m["metric"]: m for m in got["metrics"]}
    assert list(metrics) == ["total_return", "sharpe", "max_drawdown", "trades", "win_rate"]
    tr = metrics["total_return"]
    assert tr["count"] == 6 and tr["median_diff"] < 0 and tr["max_abs_diff"] >= abs(tr["median_diff"])  # costs
    assert metrics["trades"]["max_abs_diff"] == 0  # the same signals: the same trades
    code, out, _ = bt("--data", root, "compare", a, b)
    assert code == 0
    text = words(out)
    assert "commission 0 0.01" in text and "6 of the same symbol and parameters computed differently" in text
    assert "metric median difference max abs difference count" in text
    assert f"total_return {tr['median_diff'] * 100:+.2f} pp {tr['max_abs_diff'] * 100:.2f} pp 6" in text
    # the other way round: the same tasks, differences of the other sign
    back = compare_json(root, b, a)
    assert back["metrics"][0]["median_diff"] == pytest.approx(-tr["median_diff"])


def test_compare_other_symbols_shares_the_common_tasks(root: Path, sma_path: Path) -> None:
    a = run(root, sma_path)
    b = run(root, sma_path, "--symbols", "AAA")
    got = compare_json(root, a, b)
    assert got["differences"][0] == {"field": "symbols", "a": ["AAA", "BBB", "CCC"], "b": ["AAA"]}
    assert got["tasks"] == {"shared": 2, "matched": 0, "only_a": 4, "only_b": 0}


def test_compare_bad_input(root: Path, sma_path: Path) -> None:
    a = run(root, sma_path)
    code, _, err = bt("--data", root, "compare", a, "latest")
    assert code == 2 and words(err) == (f'error: "{a}" and "latest" both name run {a}; give two different runs '
                                        "(bt runs lists them)")
    code, _, err = bt("--data", root, "compare", a, "nope")
    assert code == 2 and 'unknown run "nope"' in err
    code, _, err = bt("--data", root, "compare", a, a, "--format", "xml")
    assert code == 2 and "xml" in err


def test_help_has_an_example() -> None:
    for args in (("runs",), ("runs", "rm"), ("gc",), ("compare",)):
        code, out, _ = bt(*args, "--help")
        assert code == 0 and "Example: bt " in out, args

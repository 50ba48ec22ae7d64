"""The catalog's side of managing runs: naming a run (id, prefix, latest), removing runs, and
finding the results no recorded run refers to."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from backtest.catalog import METRICS, Catalog, result_row
from backtest.errors import CatalogError


def _catalog(tmp_path: Path, *run_ids: str) -> Catalog:
    """A catalog with ``run_ids`` recorded oldest first, each with one done task of key ``k-<id>``
    and one of the shared key ``shared``."""
    cat = Catalog(tmp_path / "catalog.duckdb")
    for i, rid in enumerate(run_ids):
        cat.create_run({"run_id": rid, "created": 1000.0 + i, "strategy": "S", "status": "done", "tasks": 2,
                        "computed": 2, "cached": 0, "failed": 0, "pid": 1, "host": "elsewhere"})
        tasks = [{"key": k, "symbol": "AAA", "params": f'{{"n": {j}}}', "status": "done", "cached": False,
                  "attempts": 1, "at_time": time.time()} for j, k in enumerate((f"k-{rid}", "shared"))]
        results = [result_row({"key": t["key"], "symbol": "AAA", "params": {}, "n_trades": 0, "env": {}},
                              dict.fromkeys(METRICS, 0.1), time.time()) for t in tasks]
        cat.record(rid, tasks=tasks, results=results,
                   logs=[{"shard": "s", "worker": "w", "text": "hi", "at_time": time.time()}])
    return cat


def never(pid: int, host: str) -> bool:
    return False


def always(pid: int, host: str) -> bool:
    return True


def test_a_run_is_named_by_id_prefix_or_latest(tmp_path: Path) -> None:
    cat = _catalog(tmp_path, "sma-aaa111", "sma-aaa112", "rsi-bbb222", "sma-aaa11")
    assert cat.run("latest")["run_id"] == "sma-aaa11"
    assert cat.run(" rsi ")["run_id"] == "rsi-bbb222"  # a unique prefix (spaces around ignored)
    assert cat.run("sma-aaa11")["run_id"] == "sma-aaa11"  # an exact id, though it begins others too
    with pytest.raises(CatalogError, match=r'run "sma-aaa1" is ambiguous: it begins 3 run ids '
                                           r"\(sma-aaa11, sma-aaa112, sma-aaa111\); give more of the id"):
        cat.run("sma-aaa1")  # newest first
    with pytest.raises(CatalogError, match=r'unknown run "sma-aaa113"\. Did you mean "sma-aaa11[12]?"\?'):
        cat.run("sma-aaa113")
    with pytest.raises(CatalogError, match="give a run id"):
        cat.run("")


def test_latest_with_no_runs(tmp_path: Path) -> None:
    for cat in (Catalog(tmp_path / "none.duckdb"), _catalog(tmp_path)):  # no file; a file with no runs
        with pytest.raises(CatalogError, match="^no runs recorded yet, so there is no latest run"):
            cat.run("latest")


def test_remove_runs_takes_rows_tasks_and_logs_but_no_results(tmp_path: Path) -> None:
    cat = _catalog(tmp_path, "a-1", "b-2")
    removed = cat.remove_runs(["a-1", "a-1"], never)
    assert removed.runs == [{"run_id": "a-1", "strategy": "S", "status": "done", "tasks": 2, "logs": 1}]
    assert removed.unreferenced == 1  # k-a-1; "shared" is still b-2's
    assert [r["run_id"] for r in cat.runs()] == ["b-2"]
    assert cat.known_results(["k-a-1", "shared", "k-b-2"]) == {"k-a-1", "shared", "k-b-2"}
    with cat.connect(read_only=True) as con:
        assert con.execute("SELECT DISTINCT run_id FROM run_tasks UNION SELECT DISTINCT run_id FROM logs").fetchall() \
            == [("b-2",)]
    with pytest.raises(CatalogError, match='unknown run "a-1"'):
        cat.remove_runs(["b-2", "a-1"], never)
    assert [r["run_id"] for r in cat.runs()] == ["b-2"]  # nothing removed


def test_a_live_run_is_removed_only_by_force(tmp_path: Path) -> None:
    cat = _catalog(tmp_path, "a-1")
    with cat.connect() as con:
        con.execute("UPDATE runs SET status = 'running'")
    with pytest.raises(CatalogError, match=r"^run a-1 is still running \(pid 1 on elsewhere\); .* --force"):
        cat.remove_runs(["a-1"], always)
    assert cat.remove_runs(["a-1"], never).runs[0]["status"] == "running"  # its coordinator is gone


def test_sweep_finds_and_deletes_what_no_recorded_run_refers_to(tmp_path: Path) -> None:
    cat = _catalog(tmp_path, "a-1", "b-2")
    stored = ["k-a-1", "k-b-2", "shared", "k-stray"]
    assert cat.sweep(stored, never, None).keys == ["k-stray"]
    cat.remove_runs(["a-1"], never)
    with cat.connect() as con:  # rows a run removed with --force went on recording
        con.execute("INSERT INTO run_tasks (run_id, key, symbol, params, status) VALUES ('a-1', 'k-a-1', 'AAA', '{}', 'done')")
    look = cat.sweep(stored, never, None)
    assert (look.keys, look.rows, look.stale_rows) == (["k-a-1", "k-stray"], 1, 1)
    deleted: list[list[str]] = []
    done = cat.sweep(stored, never, deleted.append)
    assert deleted == [["k-a-1", "k-stray"]] and done.keys == ["k-a-1", "k-stray"]
    assert cat.known_results(stored) == {"k-b-2", "shared"}
    assert cat.sweep(stored, never, None).stale_rows == 0


def test_sweep_refuses_while_a_run_goes_on_and_changes_nothing(tmp_path: Path) -> None:
    cat = _catalog(tmp_path, "a-1", "b-2")
    cat.remove_runs(["a-1"], never)
    with cat.connect() as con:
        con.execute("UPDATE runs SET status = 'running'")
    assert [r["run_id"] for r in cat.sweep(["k-a-1"], always, None).live] == ["b-2"]
    deleted: list[list[str]] = []
    with pytest.raises(CatalogError, match="^run b-2 is still running .* bt gc deletes nothing"):
        cat.sweep(["k-a-1"], always, deleted.append)
    assert deleted == [] and cat.known_results(["k-a-1"]) == {"k-a-1"}
    # a coordinator that is gone: the run is marked interrupted, and the sweep goes ahead
    assert cat.sweep(["k-a-1"], never, deleted.append).keys == ["k-a-1"]
    assert cat.run("b-2")["status"] == "interrupted"

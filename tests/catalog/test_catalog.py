"""The DuckDB catalog: migrations, append-only records, concurrent processes."""

from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import sys
import threading
import time

import pytest
from helpers import loaded_by

from backtest import catalog
from backtest.catalog import METRICS, Catalog, duckdb_driver, result_row
from backtest.catalog.schema import MIGRATIONS
from backtest.errors import CatalogError


def _run(run_id: str, created: float = 0.0) -> dict:
    return {"run_id": run_id, "created": created or time.time(), "strategy": "S", "status": "running", "tasks": 2,
            "computed": 0, "cached": 0, "failed": 0}


def _result(key: str) -> dict:
    header = {"key": key, "symbol": "AAA", "params": {"fast": 5}, "n_trades": 3, "env": {}}
    return result_row(header, {m: 0.5 for m in METRICS} | {"sortino": float("nan")}, time.time())


def test_migrations_recorded_once(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb")
    with cat.connect() as con:
        pass
    with cat.connect() as con:
        n = con.execute("SELECT count(*), max(version) FROM schema_migrations").fetchone()
    assert n == (len(MIGRATIONS), len(MIGRATIONS))


@pytest.fixture(params=["extension", "package"])
def driver(request, monkeypatch):
    """The catalog on DuckDB's C extension alone (duckdb >= 1.4 has it as ``_duckdb``) and on the
    package (older duckdb, where the extension is no module of its own)."""
    import duckdb  # the package imports the extension first: both are loaded from here on

    if request.param == "package":
        monkeypatch.setitem(sys.modules, "_duckdb", None)  # `import _duckdb` fails, as before 1.4
        assert duckdb_driver() is duckdb
    else:
        assert duckdb_driver().__name__ == "_duckdb"
    return request.param


def test_the_catalog_does_not_import_the_duckdb_package(tmp_path):
    code = (f"from backtest.catalog import Catalog; c = Catalog({str(tmp_path / 'c.duckdb')!r}); "
            "c.create_run({'run_id': 'r', 'created': 1.0, 'strategy': 'S', 'status': 'done'}); print(c.run('r')['status'])")
    loaded, printed = loaded_by(code, ("_duckdb", "duckdb"))
    assert (printed, loaded) == ("done", ["_duckdb"])


@pytest.fixture(params=["numpy", "lists"])
def staging(request, monkeypatch):
    """Rows reach DuckDB as NumPy columns when NumPy is loaded, else as lists (a cached rerun)."""
    import backtest.catalog.staging

    monkeypatch.setattr(backtest.catalog.staging, "_numpy_loaded", lambda: request.param == "numpy")
    return request.param


def test_record_and_read_back(tmp_path, driver, staging):
    cat = Catalog(tmp_path / "c.duckdb")
    cat.create_run(_run("r-1"))
    cat.record("r-1", [_task("k1")], [_result("k1")], [{"shard": "s", "worker": "w", "text": "hi", "at_time": 1.0}],
               {"status": "done", "computed": 1})
    assert cat.run("r-1")["status"] == "done"
    rows = cat.task_rows("r-1")
    assert rows[0]["sharpe"] == 0.5 and rows[0]["sortino"] is None and rows[0]["n_trades"] == 3
    assert cat.logs("r-1")[0]["text"] == "hi"
    assert cat.known_results(["k1", "k2"]) == {"k1"}
    # text with quotes, newlines and non-ASCII, NULLs in every kind of column, inf as NULL
    failed = _task("k2") | {"status": "failed", "cached": True, "attempts": 3, "worker": None,
                            "error": 'ValueError: "bad" é', "details": "Traceback\n  line 1\n"}
    odd = result_row({"key": "k3", "symbol": "AAA", "params": {}, "n_trades": 0, "env": {}},
                     {m: 0.5 for m in METRICS} | {"sharpe": float("inf"), "calmar": float("nan")}, 1.0)
    cat.record("r-1", [failed], [odd], [{"shard": None, "worker": "w", "text": "a\nb", "at_time": 2.0}])
    [row] = [r for r in cat.task_rows("r-1") if r["key"] == "k2"]
    assert (row["status"], row["cached"], row["attempts"], row["worker"], row["error"]) == (
        "failed", True, 3, None, 'ValueError: "bad" é')
    with cat.connect(read_only=True) as con:
        got = con.execute("SELECT details FROM run_tasks WHERE key = 'k2'").fetchone()[0]
        sharpe, calmar, n = con.execute("SELECT sharpe, calmar, n_trades FROM results WHERE key = 'k3'").fetchone()
    assert got == "Traceback\n  line 1\n" and (sharpe, calmar, n) == (None, None, 0)
    assert [x["text"] for x in cat.logs("r-1")] == ["hi", "a\nb"]


def test_a_result_recorded_again_keeps_one_row_with_the_latest_versions(tmp_path, staging):
    """A forced rerun records its keys again: one row per key stays, its metrics as they were
    (the key fixes them), its ``env`` that of the latest computation when that differs."""
    cat = Catalog(tmp_path / "c.duckdb")
    cat.create_run(_run("r-1"))
    cat.record("r-1", [_task("k1")], [_result("k1")])
    again = _result("k1") | {"env": json.dumps({"numba": "9.9"})}
    cat.record("r-1", [_task("k1")], [again, _result("k2")])
    with cat.connect(read_only=True) as con:
        rows = con.execute("SELECT key, env, sharpe FROM results ORDER BY key").fetchall()
    assert rows == [("k1", json.dumps({"numba": "9.9"}), 0.5), ("k2", "{}", 0.5)]


def _task(key: str) -> dict:
    return {"key": key, "symbol": "AAA", "params": json.dumps({"fast": 5}), "status": "done", "cached": False,
            "attempts": 1, "error": None, "details": None, "worker": "local-0", "at_time": 1.0}


def test_a_write_takes_in_the_rows_that_are_ready_before_it_commits(tmp_path):
    """``record(more=...)``: a run's last rows join the write in progress (one transaction)."""
    cat = Catalog(tmp_path / "c.duckdb")
    cat.create_run(_run("r-1"))
    asked = []

    def more():
        asked.append(True)
        return [_task("k2")], [_result("k2")], [], {"status": "done", "computed": 2}

    cat.record("r-1", [_task("k1")], [_result("k1")], more=more)
    assert asked == [True]
    assert cat.run("r-1")["status"] == "done"
    assert [r["key"] for r in cat.task_rows("r-1")] == ["k1", "k2"]
    assert cat.known_results(["k1", "k2"]) == {"k1", "k2"}
    cat.record("r-1", [_task("k3")], more=lambda: None)  # nothing more: the write alone
    assert len(cat.task_rows("r-1")) == 3

    def broken():
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        cat.record("r-1", [_task("k4")], run_update={"status": "failed"}, more=broken)
    assert len(cat.task_rows("r-1")) == 3 and cat.run("r-1")["status"] == "done"  # all or nothing


def test_unknown_run_suggests_close_ids(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb")
    cat.create_run(_run("sma_cross-abc123"))
    with pytest.raises(CatalogError, match=r'unknown run "sma_cross-abc124"\. Did you mean "sma_cross-abc123"\?'):
        cat.run("sma_cross-abc124")
    assert cat.run("sma_cross-a")["run_id"] == "sma_cross-abc123"  # unique prefix
    with pytest.raises(CatalogError, match="no runs recorded yet"):
        Catalog(tmp_path / "none.duckdb").run("x")


def _writer(path: str, prefix: str, n: int) -> None:
    cat = Catalog(path)
    for i in range(n):
        cat.create_run(_run(f"{prefix}-{i}"))
        cat.record(f"{prefix}-{i}", results=[_result(f"{prefix}-{i}")], run_update={"status": "done"})


def test_two_processes_write_while_a_third_reads(tmp_path):
    path = str(tmp_path / "c.duckdb")
    Catalog(path).create_run(_run("seed"))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, p, 15)) for p in ("a", "b")]
    for p in procs:
        p.start()
    reads = 0
    while any(p.is_alive() for p in procs):
        Catalog(path).runs(5)
        reads += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert reads > 0
    ids = {r["run_id"] for r in Catalog(path).runs(100)}
    assert {f"{p}-{i}" for p in "ab" for i in range(15)} <= ids


def _write_from_another_process(path, sql: str) -> None:
    """``sql`` run by a separate process that opens the catalog file for writing (it fails at once
    if this process still holds the file)."""
    code = f"import duckdb; c = duckdb.connect({str(path)!r}); c.execute({sql!r}); c.close()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_write_lets_the_file_go_and_the_next_one_reuses_duckdb(tmp_path, driver):
    """Writes attach the file to one DuckDB instance per process and detach it after."""
    path = tmp_path / "c.duckdb"
    cat = Catalog(path)
    cat.create_run(_run("a"))
    instance = catalog._WRITER._con
    _write_from_another_process(path, "UPDATE runs SET status = 'done' WHERE run_id = 'a'")
    cat.create_run(_run("b"))
    assert catalog._WRITER._con is instance  # made once, not for every write
    assert (cat.run("a")["status"], cat.run("b")["status"]) == ("done", "running")


def test_a_failed_write_records_nothing_and_lets_the_file_go(tmp_path):
    path = tmp_path / "c.duckdb"
    cat = Catalog(path)
    cat.create_run(_run("a"))
    def fail() -> None:
        raise RuntimeError("failed half-way")

    with pytest.raises(RuntimeError, match="half-way"):  # after its rows went in, before the commit
        cat.record("a", [{"key": "k1", "symbol": "AAA", "status": "done"}], [_result("k1")],
                   run_update={"status": "done"}, more=fail)
    _write_from_another_process(path, "UPDATE runs SET tasks = 9 WHERE run_id = 'a'")
    assert cat.task_rows("a") == [] and cat.known_results(["k1"]) == set()
    assert (cat.run("a")["status"], cat.run("a")["tasks"]) == ("running", 9)
    cat.create_run(_run("b"))  # and the next write works
    assert cat.run("b")["status"] == "running"


def test_threads_of_one_process_take_turns_writing(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb")
    cat.create_run(_run("r"))
    errors: list[BaseException] = []

    def write(name: str) -> None:
        try:
            for i in range(15):
                cat.record("r", [{"key": f"{name}{i}", "symbol": "AAA", "status": "done"}], [_result(f"{name}{i}")])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in "xyz"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(r["key"] for r in cat.task_rows("r")) == sorted(f"{n}{i}" for n in "xyz" for i in range(15))


def test_a_catalog_of_the_first_schema_moves_its_jobs_into_files(tmp_path):
    """Migration 2: jobs leave the runs table for files named by hash; every run keeps its job."""
    import duckdb

    from backtest.store.archive import load_job

    path = tmp_path / "c.duckdb"
    jobs = ['{"symbols": ["AAA"], "params": [{"n": 1}]}', '{"symbols": ["BBB"], "params": [{"n": 2}]}']
    con = duckdb.connect(str(path))
    con.execute(MIGRATIONS[0])
    con.execute("CREATE TABLE schema_migrations (version INTEGER, applied DOUBLE)")
    con.execute("INSERT INTO schema_migrations VALUES (1, 0.0)")
    for i, job in enumerate([jobs[0], jobs[1], jobs[0]]):
        con.execute("INSERT INTO runs (run_id, created, status, job) VALUES (?, ?, 'done', ?)", [f"r{i}", float(i), job])
    con.close()

    cat = Catalog(path)
    cat.create_run(_run("new"))  # the first write applies the migration
    assert [json.dumps(load_job(tmp_path, cat.run(f"r{i}"))) for i in range(3)] == [jobs[0], jobs[1], jobs[0]]
    assert len(list((tmp_path / "jobs").glob("*.json"))) == 2  # the same job is stored once
    with cat.connect(read_only=True) as con:
        columns = [r[0] for r in con.execute("SELECT column_name FROM duckdb_columns() WHERE table_name = 'runs'").fetchall()]
        versions = con.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
    assert "job" not in columns and "job_hash" in columns and versions == len(MIGRATIONS)
    (tmp_path / "jobs" / f"{cat.run('r1')['job_hash']}.json").unlink()
    with pytest.raises(CatalogError, match="job of run r1 is not stored"):
        load_job(tmp_path, cat.run("r1"))


def test_results_recorded_before_the_added_metrics_read_as_missing(tmp_path):
    """Migrations 4 and 5 add metric columns; rows recorded before hold NULL there (shown as
    missing), and the rows recorded after hold every metric."""
    import duckdb

    from backtest.catalog import METRICS, OPTIONAL_METRICS

    path = tmp_path / "c.duckdb"
    con = duckdb.connect(str(path))
    con.execute(MIGRATIONS[0])
    con.execute("CREATE TABLE schema_migrations (version INTEGER, applied DOUBLE)")
    con.execute("INSERT INTO schema_migrations VALUES (1, 0.0)")
    con.execute("ALTER TABLE runs ADD COLUMN job_hash VARCHAR")
    con.execute("ALTER TABLE runs DROP COLUMN job")
    con.execute(MIGRATIONS[2])
    con.execute("INSERT INTO schema_migrations VALUES (2, 0.0), (3, 0.0)")
    con.execute("INSERT INTO results (key, symbol, sharpe) VALUES ('old', 'AAA', 1.5)")
    con.close()
    cat = Catalog(path)
    cat.create_run(_run("new"))  # the first write applies migrations 4 and 5
    with cat.connect(read_only=True) as con:
        cols = [r[0] for r in con.execute("SELECT column_name FROM duckdb_columns() WHERE table_name = 'results'").fetchall()]
        row = con.execute('SELECT sharpe, omega, "kelly", alpha FROM results WHERE key = ?', ["old"]).fetchone()
    assert set(METRICS) | set(OPTIONAL_METRICS) <= set(cols)
    assert row == (1.5, None, None, None)

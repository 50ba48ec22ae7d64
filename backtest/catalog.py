"""The catalog: a DuckDB file indexing runs, task outcomes, metrics and logs. The only SQL in bt.

DuckDB lets one process hold a file for writing at a time, so every use here holds the file
briefly (a read opens and closes a connection; a write attaches the file to the process's writing
instance for one transaction and detaches it), retried while another process holds the lock: two
``bt run``s at once and a ``bt report`` during a run all work. Writes are append-only (task
outcomes are final within a run), except the one ``runs`` row a run updates as it ends.

The results store is the source of truth; ``rebuild`` re-creates the ``results`` table from it.
Schema changes are numbered migrations, applied in order and recorded in ``schema_migrations``.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from backtest.errors import CatalogError, did_you_mean

METRICS = (
    "total_return", "cagr", "volatility", "sharpe", "sortino", "calmar", "max_drawdown",
    "max_drawdown_duration", "exposure", "trades", "win_rate", "best_trade", "worst_trade",
    "avg_trade", "profit_factor", "expectancy", "sqn", "final_equity", "buy_and_hold_return",
)  # fmt: skip
"""DESIGN §8's metric names: the ``results`` table has one DOUBLE column each."""

_METRIC_COLS = ", ".join(f'"{m}" DOUBLE' for m in METRICS)

def _jobs_out_of_runs(con: Any, root: Path) -> None:
    """Migration 2: each run's job (symbols, parameter sets, date range, data files: ~30 KB of
    JSON) moves from the ``runs`` table into a file named by its hash (``Catalog.save_job``),
    and the row keeps the hash. DuckDB rewrites a table's last row group at every checkpoint
    after an append, and all of a catalog's runs share one row group, so every new run rewrote
    every run's job: 30-100 ms at the start of each run with ~1 000 runs recorded, growing
    with every run."""
    con.execute("ALTER TABLE runs ADD COLUMN job_hash VARCHAR")
    for (text,) in con.execute("SELECT DISTINCT job FROM runs WHERE job IS NOT NULL").fetchall():
        con.execute("UPDATE runs SET job_hash = ? WHERE job = ?", [_save_job(root, text), text])
    con.execute("ALTER TABLE runs DROP COLUMN job")


def _save_job(root: Path, text: str) -> str:
    from backtest.fsutil import write_once
    from backtest.hashing import sha256_hex

    digest = sha256_hex(text)
    write_once(root / "jobs" / f"{digest}.json", text.encode())  # the same job run again is stored once
    return digest


#: Numbered schema changes, applied in order: SQL, or a function of the connection and the
#: catalog's folder (the data root).
MIGRATIONS: list[str | Callable[[Any, Path], None]] = [
    # 1: the first schema
    f"""
    CREATE TABLE runs (
        run_id VARCHAR PRIMARY KEY, created DOUBLE, strategy VARCHAR, strategy_file VARCHAR,
        code_hash VARCHAR, job VARCHAR, settings VARCHAR, executor VARCHAR, status VARCHAR,
        finished DOUBLE, tasks INTEGER, computed INTEGER, cached INTEGER, failed INTEGER,
        seconds DOUBLE, pid INTEGER, host VARCHAR, data_hashes VARCHAR
    );
    CREATE TABLE run_tasks (
        run_id VARCHAR, key VARCHAR, symbol VARCHAR, params VARCHAR, status VARCHAR,
        cached BOOLEAN, attempts INTEGER, error VARCHAR, details VARCHAR, worker VARCHAR, at_time DOUBLE
    );
    CREATE TABLE results (
        key VARCHAR, symbol VARCHAR, params VARCHAR, {_METRIC_COLS},
        n_trades INTEGER, env VARCHAR, recorded DOUBLE
    );
    CREATE TABLE logs (run_id VARCHAR, shard VARCHAR, worker VARCHAR, text VARCHAR, at_time DOUBLE);
    """,
    # 2: jobs kept in files by hash (runs.job → runs.job_hash)
    _jobs_out_of_runs,
]

RESULT_COLUMNS = {"key": "VARCHAR", "symbol": "VARCHAR", "params": "VARCHAR", **{m: "DOUBLE" for m in METRICS},
                  "n_trades": "INTEGER", "env": "VARCHAR", "recorded": "DOUBLE"}
TASK_COLUMNS = {"run_id": "VARCHAR", "key": "VARCHAR", "symbol": "VARCHAR", "params": "VARCHAR", "status": "VARCHAR",
                "cached": "BOOLEAN", "attempts": "INTEGER", "error": "VARCHAR", "details": "VARCHAR",
                "worker": "VARCHAR", "at_time": "DOUBLE"}
LOG_COLUMNS = {"run_id": "VARCHAR", "shard": "VARCHAR", "worker": "VARCHAR", "text": "VARCHAR", "at_time": "DOUBLE"}


def _stage(rows: Sequence[dict[str, Any]], columns: dict[str, str]) -> Staged | None:
    """Rows made ready for ``_insert_staged`` before the catalog is locked, as columns: typed
    NumPy arrays, which DuckDB scans with no copy, when NumPy is loaded (every run that computes
    has it); else Python lists, which DuckDB takes as list parameters. A run that only reads the
    store (a fully cached rerun) never loads NumPy (~0.1 s), and for its task rows lists cost the
    same (1 800 rows: 12–23 ms either way); for metric rows NumPy is ~40 % faster. (JSON text
    for DuckDB to parse, as before, cost three times as much; Arrow tables make pyarrow import
    pandas, half a second; Python rows are 50 times slower.)"""
    if not rows:
        return None
    if _numpy_loaded():
        return _numpy_columns(rows, columns)
    return {name: [row.get(name) for row in rows] for name in columns}


def _numpy_loaded() -> bool:
    return "numpy" in sys.modules


_NUMPY_TYPES = {"DOUBLE": "float64", "INTEGER": "int64", "BOOLEAN": "bool"}


def _numpy_columns(rows: Sequence[dict[str, Any]], columns: dict[str, str]) -> dict[str, Any]:
    import numpy as np

    out: dict[str, Any] = {}
    for name, sql_type in columns.items():
        values = [row.get(name) for row in rows]
        typ = _NUMPY_TYPES.get(sql_type)
        if typ == "float64":  # None as NaN; the insert turns every non-finite value into NULL
            out[name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        elif typ is not None and None not in values:
            out[name] = np.array(values, dtype=typ)
        else:  # text, or numbers with NULLs: Python objects, which DuckDB casts to the column's type
            out[name] = np.array(values, dtype=object)
    return out


T = TypeVar("T")
LOCK_WAIT = 60.0


def _flock(fd: int, shared: bool, path: Path) -> None:
    import fcntl

    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise CatalogError(f"the catalog next to {path} stayed busy for {LOCK_WAIT:.0f} s; "
                                   "is another bt stuck? (see bt runs)") from None
            time.sleep(0.002 + 0.008 * random.random())


@contextmanager
def _file_lock(path: Path, shared: bool) -> Iterator[None]:
    """Readers share, writers are alone. A writer first takes the turnstile (``.queue``) so that
    readers arriving after it wait: a stream of ``bt report``s cannot starve a run's writes."""
    import fcntl

    queue_fd = os.open(path.with_suffix(".queue"), os.O_RDWR | os.O_CREAT, 0o644)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _flock(queue_fd, shared, path)
        try:
            _flock(fd, shared, path)
        finally:
            fcntl.flock(queue_fd, fcntl.LOCK_UN)
        yield
    finally:
        os.close(fd)
        os.close(queue_fd)


def duckdb_driver() -> Any:
    """DuckDB as the catalog uses it: the C extension alone where it is a module of its own
    (``_duckdb``, duckdb ≥ 1.4), else the ``duckdb`` package. The catalog needs only what the
    extension has (connect, execute, fetch, register, the exceptions); importing the package
    also builds its Python layer (relational API, Arrow scan sources, expressions), ~0.1 s that
    every ``bt`` command touching the catalog would pay (a fifth of a fully cached rerun)."""
    import importlib

    try:
        return importlib.import_module("_duckdb")
    except ImportError:
        return importlib.import_module("duckdb")


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text or "conflicting" in text or "being used by another process" in text


class _Writer:
    """This process's DuckDB instance for writing catalogs: in memory, on one thread, made once
    (making an instance costs 20-50 ms, most of it DuckDB filling its own system catalog, which a
    run would pay at its start and again at its end), with the catalog file attached for each
    write and detached after (~1.5 ms), which takes and lets go of the file as opening and closing
    a connection does. Writes in one process take turns; a turn that fails drops the instance
    (closing it lets the file go whatever state it is in), and the next turn makes a new one."""

    ALIAS = "bt_catalog"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._con: Any = None
        self._pid = 0
        self._driver: Any = None

    @contextmanager
    def turn(self, path: Path, opening: Callable[[Callable[[], Any]], Any]) -> Iterator[Any]:
        with self._lock:
            driver = duckdb_driver()
            if self._con is None or self._pid != os.getpid() or self._driver is not driver:
                self._con = driver.connect(":memory:", config={"threads": 1})  # (a forked child makes its own)
                self._pid, self._driver = os.getpid(), driver
            con = self._con
            quoted = str(path).replace("'", "''")
            opening(lambda: con.execute(f"ATTACH '{quoted}' AS {self.ALIAS}"))
            try:
                con.execute(f"USE {self.ALIAS}")
                yield con
            except BaseException:
                self._drop()
                raise
            try:
                con.execute("USE memory")
                con.execute(f"DETACH {self.ALIAS}")
            except Exception:
                self._drop()

    def _drop(self) -> None:
        try:
            self._con.close()
        except Exception:  # noqa: S110 - it is being thrown away
            pass
        self._con = None


_WRITER = _Writer()


class Catalog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[Any]:
        """A short connection. Processes take turns through a lock file next to the catalog
        (shared for readers, exclusive for writers), so DuckDB never sees two processes at once;
        a write checkpoints before it lets go, so no reader ever depends on another's WAL.

        A write attaches the file to this process's writing instance of DuckDB (``_Writer``)
        and detaches it after, which lets the file go exactly as closing a connection does."""
        duckdb = duckdb_driver()
        if read_only and not self.path.exists():
            raise CatalogError("no runs recorded yet; start one with: bt run STRATEGY.py")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.path.with_name(self.path.name + ".lock"), shared=read_only):
            if read_only:
                con = self._opening(lambda: duckdb.connect(str(self.path), read_only=True))
                try:
                    yield con
                finally:
                    con.close()
                return
            with _WRITER.turn(self.path, self._opening) as con:
                self._migrate(con)
                yield con
                con.execute("CHECKPOINT")

    def _opening(self, open_: Callable[[], T]) -> T:
        """``open_()``, retried while another program (not bt) holds the file, within reason."""
        duckdb = duckdb_driver()
        deadline = time.monotonic() + LOCK_WAIT
        delay = 0.005
        while True:
            try:
                return open_()
            except (duckdb.IOException, duckdb.ConnectionException) as exc:
                if not _is_lock_error(exc) or time.monotonic() > deadline:
                    raise CatalogError(f"cannot open the catalog {self.path}: {exc}") from exc
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 0.2)

    def _migrate(self, con: Any) -> None:
        con.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER, applied DOUBLE)")
        done = con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
        for version, step in enumerate(MIGRATIONS[done:], start=done + 1):
            con.execute("BEGIN")
            if isinstance(step, str):
                con.execute(step)
            else:
                step(con, self.path.parent)
            con.execute("INSERT INTO schema_migrations VALUES (?, ?)", [version, time.time()])
            con.execute("COMMIT")

    def save_job(self, text: str) -> str:
        """Keep a run's job (its JSON) as ``<root>/jobs/<sha256>.json``; the hash, for the run's
        ``job_hash``. Files, not a column: see ``_jobs_out_of_runs``."""
        return _save_job(self.path.parent, text)

    def job(self, run: dict[str, Any]) -> dict[str, Any]:
        """The job of ``run`` (a ``runs`` row), as it was recorded."""
        path = self.path.parent / "jobs" / f"{run.get('job_hash')}.json"
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            raise CatalogError(f"the job of run {run['run_id']} is not stored ({path} is missing); "
                               "run the job again instead") from None

    def _write(self, fn: Callable[[Any], T]) -> T:
        with self.connect() as con:
            con.execute("BEGIN")
            try:
                out = fn(con)
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
            return out

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self.connect(read_only=True) as con:
            cur = con.execute(sql, list(params))
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    # writing ------------------------------------------------------------------------------------
    def create_run(self, run: dict[str, Any]) -> None:
        self._write(lambda con: _insert_run(con, run))

    def start_run(self, run: dict[str, Any], keys: Sequence[str], alive: Callable[[int, str], bool],
                  then: Callable[[set[str]], Rows] | None = None) -> set[str]:
        """One connection for all a run does at its start: runs whose coordinator is gone become
        'interrupted', the run is recorded, and the subset of ``keys`` the catalog indexes is returned.
        With ``then``, the rows it makes of that subset (tasks, results, logs, run update) are
        recorded in the same transaction: a run with nothing to compute costs one transaction."""
        def go(con: Any) -> set[str]:
            _mark_stale(con, alive)
            _insert_run(con, run)
            known: set[str] = set()
            if keys:
                rows = con.execute("SELECT key FROM results WHERE key IN (SELECT unnest(?::VARCHAR[]))",
                                   [list(keys)])
                known = {r[0] for r in rows.fetchall()}
            if then is not None:
                tasks, results, logs, update = then(known)
                _insert_staged(con, _stage_rows(tasks, results, logs), run["run_id"], update)
            return known

        return self._write(go)

    def record(
        self,
        run_id: str,
        tasks: Sequence[dict[str, Any]] = (),
        results: Sequence[dict[str, Any]] = (),
        logs: Sequence[dict[str, Any]] = (),
        run_update: dict[str, Any] | None = None,
        more: Callable[[], Rows | None] | None = None,
    ) -> None:
        """Append task outcomes, metric rows and logs, and update the run row, in one transaction.

        ``more`` is asked just before the commit for further rows (tasks, results, logs, run
        update) to record in the same transaction, or None: a run whose last outcome comes in
        while its previous rows are being written has its last rows recorded with them, instead
        of paying for a connection of their own after."""
        staged = _stage_rows(tasks, results, logs)  # before taking the lock

        def go(con: Any) -> None:
            _insert_staged(con, staged, run_id, run_update)
            extra = more() if more is not None else None
            if extra is not None:
                tasks2, results2, logs2, update2 = extra
                _insert_staged(con, _stage_rows(tasks2, results2, logs2), run_id, update2)

        self._write(go)

    def mark_stale_runs(self, alive: Callable[[int, str], bool]) -> None:
        """Runs still 'running' whose coordinator is gone become 'interrupted'."""
        if not self.path.exists():
            return
        rows = self._read("SELECT run_id, pid, host FROM runs WHERE status = 'running'")
        if any(not alive(r["pid"], r["host"]) for r in rows):
            self._write(lambda con: _mark_stale(con, alive))

    # reading ------------------------------------------------------------------------------------
    def known_results(self, keys: Sequence[str]) -> set[str]:
        if not keys or not self.path.exists():
            return set()
        with self.connect(read_only=True) as con:
            rows = con.execute("SELECT key FROM results WHERE key IN (SELECT unnest(?::VARCHAR[]))", [list(keys)])
            return {r[0] for r in rows.fetchall()}

    def runs(self, limit: int = 50) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return self._read("SELECT * FROM runs ORDER BY created DESC LIMIT ?", [limit])

    def run(self, run_id: str) -> dict[str, Any]:
        rows = self._read("SELECT * FROM runs WHERE run_id = ?", [run_id]) if self.path.exists() else []
        if rows:
            return rows[0]
        ids = [r["run_id"] for r in self.runs(1000)]
        prefixed = [i for i in ids if i.startswith(run_id)]
        if len(prefixed) == 1:
            return self.run(prefixed[0])
        if not ids:
            raise CatalogError(f'unknown run "{run_id}": no runs recorded yet; start one with: bt run STRATEGY.py')
        hint = did_you_mean(run_id, ids) or " Recent runs: " + ", ".join(ids[:3]) + "."
        raise CatalogError(f'unknown run "{run_id}".{hint} (bt runs lists them)')

    def task_rows(self, run_id: str) -> list[dict[str, Any]]:
        """Every recorded task of a run, with its metrics where it is done."""
        metrics = ", ".join(f'r."{m}"' for m in METRICS)
        return self._read(
            f"""SELECT t.key, t.symbol, t.params, t.status, t.cached, t.attempts, t.error, t.worker,
                       {metrics}, r.n_trades
                FROM run_tasks t LEFT JOIN results r USING (key)
                WHERE t.run_id = ? ORDER BY t.symbol, t.params""",
            [run_id],
        )

    def failures(self, run_id: str) -> list[dict[str, Any]]:
        return self._read(
            "SELECT key, symbol, params, attempts, error, details, worker FROM run_tasks "
            "WHERE run_id = ? AND status = 'failed' ORDER BY symbol, params",
            [run_id],
        )

    def logs(self, run_id: str) -> list[dict[str, Any]]:
        return self._read("SELECT shard, worker, text, at_time FROM logs WHERE run_id = ? ORDER BY at_time", [run_id])

    # rebuilding ---------------------------------------------------------------------------------
    def rebuild_results(self, rows: Sequence[dict[str, Any]]) -> int:
        """Replace the ``results`` table with ``rows`` (read from the results store)."""
        staged = _stage(rows, RESULT_COLUMNS)

        def go(con: Any) -> int:
            con.execute("DELETE FROM results")
            if staged is not None:
                con.execute(f"INSERT INTO results BY NAME SELECT * FROM {_source(con, staged, RESULT_COLUMNS, 'staged_results')}")
                _release(con, staged, "staged_results")
            return len(rows)

        return self._write(go)


Rows = tuple[Sequence[dict[str, Any]], Sequence[dict[str, Any]], Sequence[dict[str, Any]], "dict[str, Any] | None"]
Staged = dict[str, Any]  # columns by name: NumPy arrays, or Python lists (``_stage``)
_Staged = list[tuple["Staged | None", str, dict[str, str]]]


#: The columns rows are staged with, by table: all but ``run_id``, which the insert adds.
_GIVEN = {table: {k: t for k, t in columns.items() if k != "run_id"}
          for table, columns in (("results", RESULT_COLUMNS), ("run_tasks", TASK_COLUMNS), ("logs", LOG_COLUMNS))}


def _stage_rows(tasks: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]],
                logs: Sequence[dict[str, Any]]) -> _Staged:
    """The rows staged for ``_insert_staged`` (task and log rows need no ``run_id``)."""
    return [(_stage(rows, _GIVEN[table]), table, _GIVEN[table])
            for rows, table in ((results, "results"), (tasks, "run_tasks"), (logs, "logs"))]


def _source(con: Any, staged: Staged, columns: dict[str, str], name: str) -> str:
    """The staged rows made a relation ``name`` of ``con`` (``_release`` drops it); a SQL source
    of them with ``columns`` (non-finite numbers as NULL, as the catalog keeps them)."""
    if _as_lists(staged):
        unnest = ", ".join(f'unnest(?::{t}[]) AS "{k}"' for k, t in columns.items())
        con.execute(f"CREATE TEMP TABLE {name} AS SELECT {unnest}", [staged[k] for k in columns])
    else:
        con.register(name, staged)
    cols = ", ".join(f'CASE WHEN isfinite("{k}") THEN "{k}" END AS "{k}"' if t == "DOUBLE" else f'"{k}"'
                     for k, t in columns.items())
    return f"(SELECT {cols} FROM {name})"


def _insert_staged(con: Any, staged: _Staged, run_id: str, run_update: dict[str, Any] | None) -> None:
    for rows, table, columns in staged:
        if rows is None:
            continue
        src = _source(con, rows, columns, f"staged_{table}")
        if table == "results":
            # Results are keyed by content: a key recorded again (``--force``) has the same
            # metrics, so its row stays (deleting and re-inserting every row of a forced rerun
            # made the insert and the checkpoint after it twice as slow); only the versions that
            # computed it again, when they differ, are brought up to date.
            con.execute(f"UPDATE results SET env = s.env FROM {src} AS s "
                        "WHERE results.key = s.key AND results.env IS DISTINCT FROM s.env")
            con.execute(f"INSERT INTO results BY NAME SELECT * FROM {src} WHERE key NOT IN (SELECT key FROM results)")
        else:
            con.execute(f"INSERT INTO {table} BY NAME SELECT *, ? AS run_id FROM {src}", [run_id])
        _release(con, rows, f"staged_{table}")
    if run_update:
        sets = ", ".join(f"{k} = ?" for k in run_update)
        con.execute(f"UPDATE runs SET {sets} WHERE run_id = ?", [*run_update.values(), run_id])


def _release(con: Any, staged: Staged, name: str) -> None:
    if _as_lists(staged):
        con.execute(f"DROP TABLE {name}")
    else:
        con.unregister(name)


def _as_lists(staged: Staged) -> bool:
    """Whether ``staged`` holds Python lists (a temporary table) rather than NumPy columns."""
    return isinstance(next(iter(staged.values())), list)


def _insert_run(con: Any, run: dict[str, Any]) -> None:
    cols = list(run)
    con.execute(f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", [run[c] for c in cols])


def _mark_stale(con: Any, alive: Callable[[int, str], bool]) -> None:
    rows = con.execute("SELECT run_id, pid, host FROM runs WHERE status = 'running'").fetchall()
    for run_id, pid, host in rows:
        if not alive(pid, host):
            con.execute("UPDATE runs SET status = 'interrupted' WHERE run_id = ?", [run_id])


def result_row(header: dict[str, Any], metrics: dict[str, float], recorded: float,
               params_text: str | None = None, env_text: str | None = None) -> dict[str, Any]:
    """A ``results`` table row from a result file's header and metrics (the texts of its params
    and env may be given, when the caller has them encoded already)."""
    import math

    row: dict[str, Any] = {
        "key": header["key"],
        "symbol": header["symbol"],
        "params": params_text or json.dumps(header["params"], sort_keys=True),
        "n_trades": header["n_trades"],
        "env": env_text or json.dumps(header["env"], sort_keys=True),
        "recorded": recorded,
    }
    for m in METRICS:
        v = metrics.get(m)
        row[m] = None if v is None or not math.isfinite(v) else v  # the result file keeps inf; SQL gets NULL
    return row

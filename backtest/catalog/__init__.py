"""The catalog: a DuckDB file indexing runs, task outcomes, metrics and logs. The only SQL in bt.

DuckDB lets one process hold a file for writing at a time, so every use here holds the file
briefly (a read opens and closes a connection; a write attaches the file to the process's writing
instance for one transaction and detaches it), retried while another process holds the lock: two
``bt run``s at once and a ``bt report`` during a run all work. Writes are append-only (task
outcomes are final within a run), except the one ``runs`` row a run updates as it ends.

The results store is the source of truth; ``rebuild`` re-creates the ``results`` table from it.

Modules: ``schema`` (tables and numbered migrations), ``connection`` (lock file, driver, the
writing instance, retries), ``staging`` (rows made ready and inserted), ``rebuild`` (the index
rebuilt from the results store); the ``Catalog`` facade (queries and writes) and ``result_row``
are here.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from backtest.catalog.connection import _WRITER, LOCK_WAIT, T, _file_lock, _is_lock_error, duckdb_driver
from backtest.catalog.schema import METRICS, MIGRATIONS, RESULT_COLUMNS
from backtest.catalog.staging import (
    Rows,
    _insert_run,
    _insert_staged,
    _mark_stale,
    _release,
    _source,
    _stage,
    _stage_rows,
)
from backtest.errors import CatalogError, did_you_mean

__all__ = ["METRICS", "Catalog", "duckdb_driver", "result_row"]


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

    def remove_runs(self, run_ids: Sequence[str]) -> None:
        """Forget runs: their rows, task outcomes and logs. Results stay (other runs may share them;
        ``bt gc`` removes the ones no run refers to)."""
        def go(con: Any) -> None:
            for table in ("run_tasks", "logs", "runs"):
                con.execute(f"DELETE FROM {table} WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [list(run_ids)])

        self._write(go)

    def forget_results(self, keys: Sequence[str]) -> None:
        """Drop the metric rows of results that are being deleted from the store."""
        if keys:
            self._write(lambda con: con.execute(
                "DELETE FROM results WHERE key IN (SELECT unnest(?::VARCHAR[]))", [list(keys)]))

    # reading ------------------------------------------------------------------------------------
    def referenced_keys(self) -> set[str]:
        """Every result key some recorded run's tasks name."""
        if not self.path.exists():
            return set()
        with self.connect(read_only=True) as con:
            return {r[0] for r in con.execute("SELECT DISTINCT key FROM run_tasks").fetchall()}

    def running(self, alive: Callable[[int, str], bool]) -> list[str]:
        """Runs recorded as running whose coordinator may still be at it."""
        if not self.path.exists():
            return []
        rows = self._read("SELECT run_id, pid, host FROM runs WHERE status = 'running'")
        return [r["run_id"] for r in rows if alive(r["pid"], r["host"])]

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
        """The run named by ``run_id``: a full id, a unique prefix of one, or ``latest`` (the newest)."""
        if run_id == "latest":
            newest = self.runs(1)
            if not newest:
                raise CatalogError("no runs recorded yet, so there is no latest; start one with: bt run STRATEGY.py")
            return newest[0]
        rows = self._read("SELECT * FROM runs WHERE run_id = ?", [run_id]) if self.path.exists() else []
        if rows:
            return rows[0]
        ids = [r["run_id"] for r in self.runs(1000)]
        prefixed = [i for i in ids if i.startswith(run_id)]
        if len(prefixed) == 1:
            return self.run(prefixed[0])
        if len(prefixed) > 1:
            shown = ", ".join(prefixed[:5]) + (f" and {len(prefixed) - 5} more" if len(prefixed) > 5 else "")
            raise CatalogError(f'run "{run_id}" is ambiguous: it begins {len(prefixed)} run ids ({shown}); '
                               "give more of the id")
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

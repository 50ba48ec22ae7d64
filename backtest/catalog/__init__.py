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

import itertools
import json
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backtest.catalog.connection import (
    _WRITER,
    LOCK_WAIT,
    T,
    _file_lock,
    _is_lock_error,
    duckdb_driver,
    spill_folder,
)
from backtest.catalog.schema import METRICS, MIGRATIONS, OPTIONAL_METRICS, RESULT_COLUMNS
from backtest.catalog.staging import (
    NUMPY_ROWS,
    Recover,
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

__all__ = ["METRICS", "OPTIONAL_METRICS", "Catalog", "Removed", "Sweep", "duckdb_driver", "result_row"]


@dataclass(frozen=True)
class Removed:
    """What ``Catalog.remove_runs`` removed: each run (``run_id``, ``strategy``, ``status``, and how
    many ``tasks`` and ``logs`` rows went with it), and how many stored results no remaining run
    refers to any more because of it (``bt gc`` deletes them)."""

    runs: list[dict[str, Any]]
    unreferenced: int


@dataclass(frozen=True)
class Sweep:
    """What ``Catalog.sweep`` found (and, when it deleted, removed): the stored result ``keys`` no
    recorded run refers to, the ``results`` rows of keys no run refers to (whether or not the
    file is there), the ``stale_rows`` (task and log rows of runs no longer recorded), and the
    runs going on (``live``: only when looking)."""

    keys: list[str]
    rows: int
    stale_rows: int
    live: list[dict[str, Any]]


_READERS = itertools.count()  # memory-bounded readers of this process, each spilling to its own folder


class Catalog:
    def __init__(self, path: Path, recover: Recover | None = None) -> None:
        """``recover``: how to find the results a run whose coordinator died stored but did not
        record (``backtest.run.recover.recovery``); without it such runs are only marked interrupted."""
        self.path = Path(path)
        self.recover = recover

    @contextmanager
    def connect(self, read_only: bool = False, memory: str | None = None) -> Iterator[Any]:
        """A short connection. Processes take turns through a lock file next to the catalog
        (shared for readers, exclusive for writers), so DuckDB never sees two processes at once;
        a write checkpoints before it lets go, so no reader ever depends on another's WAL.
        ``memory`` (a reader's) bounds what DuckDB holds in memory (e.g. "256MB"); a larger sort
        spills to temporary files (in the system's temporary folder: the data root may be read only).

        A write attaches the file to this process's writing instance of DuckDB (``_Writer``)
        and detaches it after, which lets the file go exactly as closing a connection does."""
        duckdb = duckdb_driver()
        if read_only and not self.path.exists():
            raise CatalogError("no runs recorded yet; start one with: bt run STRATEGY.py")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.path.with_name(self.path.name + ".lock"), shared=read_only):
            if read_only:
                config = {} if memory is None else {"memory_limit": memory, "threads": 1,
                                                    "temp_directory": spill_folder(f"reader-{next(_READERS)}")}
                con = self._opening(lambda: duckdb.connect(str(self.path), read_only=True, config=config))
                try:
                    yield con
                finally:
                    con.close()
                return
            if not self.path.exists():
                self._create()
            with _WRITER.turn(self.path, self._opening) as con:
                self._migrate(con)
                yield con
                con.execute("CHECKPOINT")

    def _create(self) -> None:
        """Make a new catalog beside its place and move it there whole (the caller holds the
        lock): a full disk or a kill while it is made leaves no half-made file to open."""
        import os

        duckdb = duckdb_driver()
        tmp = self.path.with_name(f"{self.path.name}.new-{os.getpid()}")
        try:
            con = duckdb.connect(str(tmp))
            try:
                self._migrate(con)
                con.execute("CHECKPOINT")
            finally:
                con.close()
            os.replace(tmp, self.path)
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
                leftover.unlink(missing_ok=True)

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
                    fix = ("; bt catalog rebuild sets it aside and makes a new one from the stored results"
                           if not _is_lock_error(exc) else "")
                    raise CatalogError(f"cannot open the catalog {self.path}: {exc}{fix}") from exc
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
        'interrupted', the run is recorded, and the subset of ``keys`` the catalog does *not* index
        is returned (usually none: a million indexed keys cost nothing to send back). With
        ``then``, the rows it makes given that subset (tasks, results, logs, run update) are
        recorded in the same transaction: a run with nothing to compute costs one transaction."""
        def go(con: Any) -> set[str]:
            _mark_stale(con, alive, self.recover)
            _insert_run(con, run)
            missing: set[str] = set()
            unindexed = "SELECT p.key FROM {} p WHERE NOT EXISTS (SELECT 1 FROM results r WHERE r.key = p.key)"
            if len(keys) > NUMPY_ROWS:  # a NumPy column DuckDB scans: ~5x faster than a list parameter
                import numpy as np

                con.register("planned_keys", {"key": np.array(keys, dtype=object)})
                missing = {r[0] for r in con.execute(unindexed.format("planned_keys")).fetchall()}
                con.unregister("planned_keys")
            elif keys:
                rows = con.execute(unindexed.format("(SELECT unnest(?::VARCHAR[]) AS key)"), [list(keys)])
                missing = {r[0] for r in rows.fetchall()}
            if then is not None:
                tasks, results, logs, update = then(missing)
                _insert_staged(con, _stage_rows(tasks, results, logs), run["run_id"], update)
            return missing

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
            self._write(lambda con: _mark_stale(con, alive, self.recover))

    def remove_runs(self, run_ids: Sequence[str], alive: Callable[[int, str], bool],
                    force: bool = False) -> Removed:
        """Forget runs: their rows, task outcomes and logs, in one transaction. Results stay (other
        runs may share them; ``bt gc`` deletes the ones no run refers to). A run recorded as
        running whose coordinator may still be at it (``alive``) is refused unless ``force``."""
        ids = list(dict.fromkeys(run_ids))

        def go(con: Any) -> Removed:
            rows = con.execute(
                "SELECT run_id, strategy, status, pid, host FROM runs WHERE run_id IN (SELECT unnest(?::VARCHAR[]))",
                [ids]).fetchall()
            found = {r[0]: r for r in rows}
            gone = [i for i in ids if i not in found]
            if gone:  # removed by another bt since it was named
                raise CatalogError(f'unknown run "{gone[0]}" (bt runs lists them)')
            live = [r for r in rows if r[2] == "running" and alive(r[3], r[4])]
            if live and not force:
                rid, _, _, pid, host = live[0]
                more = f" (and {len(live) - 1} more)" if len(live) > 1 else ""
                raise CatalogError(f"run {rid}{more} is still running (pid {pid} on {host}); stop it first "
                                   "(Ctrl+C in its terminal), or give --force to remove it anyway")
            tasks = dict(con.execute(
                "SELECT run_id, count(*) FROM run_tasks WHERE run_id IN (SELECT unnest(?::VARCHAR[])) GROUP BY run_id",
                [ids]).fetchall())
            logs = dict(con.execute(
                "SELECT run_id, count(*) FROM logs WHERE run_id IN (SELECT unnest(?::VARCHAR[])) GROUP BY run_id",
                [ids]).fetchall())
            # results only these runs refer to: bt gc can delete them once the runs are gone
            (freed,) = con.execute(
                """SELECT count(DISTINCT key) FROM run_tasks
                   WHERE run_id IN (SELECT unnest(?::VARCHAR[])) AND status = 'done'
                     AND key NOT IN (SELECT key FROM run_tasks t JOIN runs USING (run_id)
                                     WHERE t.run_id NOT IN (SELECT unnest(?::VARCHAR[])))""",
                [ids, ids]).fetchone()
            for table in ("run_tasks", "logs", "runs"):
                con.execute(f"DELETE FROM {table} WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [ids])
            runs = [{"run_id": i, "strategy": found[i][1], "status": found[i][2], "tasks": int(tasks.get(i, 0)),
                     "logs": int(logs.get(i, 0))} for i in ids]
            return Removed(runs, int(freed))

        return self._write(go)

    def sweep(self, stored: Sequence[str], alive: Callable[[int, str], bool],
              delete: Callable[[list[str]], None] | None) -> Sweep:
        """The stored results (of ``stored``, the results store's keys) that no recorded run refers
        to any more. With ``delete``, in one transaction that holds the catalog while it runs:
        refuse if a run is going on (``alive``: its newest results are not recorded yet), drop
        the ``results`` rows no recorded run refers to and the task and log rows of runs no longer
        recorded, and call ``delete`` with those keys before committing (a run that starts
        meanwhile waits, and finds them gone). Without it, only look (``live`` says which runs
        are going on, so that the caller can say the answer may change)."""
        referenced = "SELECT 1 FROM run_tasks t JOIN runs r ON t.run_id = r.run_id WHERE t.key = {}"
        unused_sql = f"SELECT s.k FROM (SELECT unnest(?::VARCHAR[]) AS k) s WHERE NOT EXISTS ({referenced.format('s.k')})"
        rows_where = f"NOT EXISTS ({referenced.format('results.key')})"
        stale_where = "run_id NOT IN (SELECT run_id FROM runs)"

        def look(con: Any, live: list[dict[str, Any]]) -> Sweep:
            unused = sorted(r[0] for r in con.execute(unused_sql, [list(stored)]).fetchall())
            (rows,) = con.execute(f"SELECT count(*) FROM results WHERE {rows_where}").fetchone()
            (stale,) = con.execute(f"SELECT (SELECT count(*) FROM run_tasks WHERE {stale_where}) "
                                   f"+ (SELECT count(*) FROM logs WHERE {stale_where})").fetchone()
            return Sweep(unused, int(rows), int(stale), live)

        if delete is None:
            if not self.path.exists():
                return Sweep(sorted(stored), 0, 0, [])
            live = self.running(alive)
            with self.connect(read_only=True) as con:
                return look(con, live)

        def go(con: Any) -> Sweep:
            _mark_stale(con, alive, self.recover)
            cols = "run_id, pid, host"
            going = [dict(zip(("run_id", "pid", "host"), r, strict=True)) for r in con.execute(
                f"SELECT {cols} FROM runs WHERE status = 'running' ORDER BY created DESC").fetchall()]
            if going:  # (_mark_stale left only runs whose coordinator may be alive)
                r = going[0]
                more = f" (and {len(going) - 1} more)" if len(going) > 1 else ""
                raise CatalogError(f"run {r['run_id']}{more} is still running (pid {r['pid']} on {r['host']}); "
                                   "bt gc deletes nothing while a run goes on (its newest results are not "
                                   "recorded yet): run it again when the run has ended")
            found = look(con, [])
            con.execute(f"DELETE FROM results WHERE {rows_where}")
            con.execute(f"DELETE FROM run_tasks WHERE {stale_where}")
            con.execute(f"DELETE FROM logs WHERE {stale_where}")
            delete(found.keys)
            return found

        return self._write(go)

    # reading ------------------------------------------------------------------------------------
    def running(self, alive: Callable[[int, str], bool]) -> list[dict[str, Any]]:
        """Runs recorded as running whose coordinator may still be at it (``alive``): their rows."""
        if not self.path.exists():
            return []
        rows = self._read("SELECT * FROM runs WHERE status = 'running' ORDER BY created DESC")
        return [r for r in rows if alive(r["pid"], r["host"])]

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
        """The run named by ``run_id``: a full id, a unique prefix of one, or ``latest`` (the
        newest run, by when it started). Anything else is one line: no runs, unknown (with the
        closest ids) or ambiguous (with the ids it begins)."""
        name = run_id.strip()
        if not name:
            raise CatalogError('give a run id: one from bt runs, a unique prefix of one, or "latest"')
        if name == "latest":
            newest = self.runs(1)
            if not newest:
                raise CatalogError("no runs recorded yet, so there is no latest run; start one with: bt run STRATEGY.py")
            return newest[0]
        if not self.path.exists():
            raise CatalogError(f'unknown run "{name}": no runs recorded yet; start one with: bt run STRATEGY.py')
        rows = self._read("SELECT * FROM runs WHERE starts_with(run_id, ?) ORDER BY created DESC", [name])
        exact = [r for r in rows if r["run_id"] == name]
        if exact or len(rows) == 1:
            return (exact or rows)[0]
        if rows:
            prefixed = [r["run_id"] for r in rows]
            shown = ", ".join(prefixed[:5]) + (f" and {len(prefixed) - 5} more" if len(prefixed) > 5 else "")
            raise CatalogError(f'run "{name}" is ambiguous: it begins {len(prefixed)} run ids ({shown}); '
                               "give more of the id")
        ids = [r["run_id"] for r in self._read("SELECT run_id FROM runs ORDER BY created DESC")]
        if not ids:
            raise CatalogError(f'unknown run "{name}": no runs recorded yet; start one with: bt run STRATEGY.py')
        hint = did_you_mean(name, ids) or " Recent runs: " + ", ".join(ids[:3]) + "."
        raise CatalogError(f'unknown run "{name}".{hint} (bt runs lists them)')

    def task_rows(self, run_id: str) -> list[dict[str, Any]]:
        """Every recorded task of a run, with its metrics where it is done."""
        metrics = ", ".join(f'r."{m}"' for m in (*METRICS, *OPTIONAL_METRICS))
        return self._read(
            f"""SELECT t.key, t.symbol, t.params, t.status, t.cached, t.attempts, t.error, t.worker,
                       {metrics}, r.n_trades
                FROM run_tasks t LEFT JOIN results r USING (key)
                WHERE t.run_id = ? ORDER BY t.symbol, t.params""",
            [run_id],
        )

    def done_keys(self, run_id: str) -> list[str]:
        """The keys of a run's tasks that are done (computed or cached)."""
        with self.connect(read_only=True) as con:
            return [k for (k,) in con.execute("SELECT key FROM run_tasks WHERE run_id = ? AND status = 'done'",
                                              [run_id]).fetchall()]

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
    for m in (*METRICS, *OPTIONAL_METRICS):
        v = metrics.get(m)
        row[m] = None if v is None or not math.isfinite(v) else v  # the result file keeps inf; SQL gets NULL
    return row

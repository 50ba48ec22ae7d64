"""The one path by which a run's outcomes reach the catalog.

A ``Recorder`` gathers task, result and log rows as outcomes come in and records them in short
transactions (every ``FLUSH_SECONDS``, or ``FLUSH_ROWS`` at a time when rows come fast, and as the
run nears its end) from a writer thread, so that
the event loop goes on taking events meanwhile. Results the coordinator stores itself (from
executors that send the bytes) are written, a pack per flush, by the same thread before the rows
that name them: the catalog never names a result that is not stored. The run's last rows and its final status are
recorded in one transaction, the writer's last if it is still writing (``_LastRows``).
"""

from __future__ import annotations

import importlib
import json
import threading
import time
from collections.abc import Container, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cached_property
from typing import Any

from backtest.executors.base import (
    ShardFailed,
    ShardLog,
    TaskDone,
    TaskFailed,
    TasksDone,
    WorkerNote,
    WorkerStatus,
)
from backtest.plan import TaskTable, keys_of
from backtest.run.request import Prepared
from backtest.spec import Task
from backtest.trace import mark

FLUSH_SECONDS = 2.0
#: Rows come fast when more than ``BUSY_ROWS`` are waiting after ``FLUSH_SECONDS``: they are then
#: recorded ``FLUSH_ROWS`` at a time, or after ``MAX_LAG_SECONDS``. DuckDB keeps a table in row
#: groups of ``ROW_GROUP`` rows, and a checkpoint compresses a partly filled row group again with
#: the rows added to it since, so a write whose rows end inside a row group costs several times
#: one that ends at a row group's end: a million task and result rows written 81 920 at a time
#: took 7.5 s of DuckDB's CPU, 40 960 at a time 12.6 s, 122 880 (one row group) at a time 2.9 s
#: (and the catalog was 334 MB instead of 262 MB). So rows that come fast are written whole row
#: groups at a time (``Recorder.flush``'s ``aligned``), the rest kept for the next write.
ROW_GROUP = 122_880
BUSY_ROWS = 20_000
FLUSH_ROWS = ROW_GROUP
MAX_LAG_SECONDS = 10.0
LAST_ROWS_WAIT = 0.3  # seconds a catalog write near a run's end waits for the last rows (see _LastRows)


def flush_due(rows: int, waited: float) -> bool:
    """Whether ``rows`` task rows gathered over ``waited`` seconds are recorded now."""
    return rows >= FLUSH_ROWS or waited > MAX_LAG_SECONDS or (waited > FLUSH_SECONDS and rows < BUSY_ROWS)


def task_row(t: Task, params: str, status: str, cached: bool, attempts: int, error: str | None,
             details: str | None, worker: str | None, at: float) -> dict[str, Any]:
    return {"key": t.key, "symbol": t.symbol, "params": params, "status": status,
            "cached": cached, "attempts": attempts, "error": error, "details": details, "worker": worker, "at_time": at}


def _shard_tasks(spec: Any) -> dict[str, Task]:
    """The tasks of a shard's spec, by key."""
    return {key: Task(key, spec.symbol, params, g.warmup) for g in spec.groups for key, params in g.tasks}


def _done_block(keys: Any, symbols: Any, params: Any, cached: bool, attempts: int, worker: str | None,
                now: float) -> Any:
    """Task rows, done, as one ``Columns`` block, from their key, symbol and params columns."""
    import numpy as np

    from backtest.catalog.staging import Columns

    n = len(keys)
    return Columns(n, {
        "key": keys, "symbol": symbols, "params": params,
        "status": np.full(n, "done", dtype=object), "cached": np.full(n, cached),
        "attempts": np.full(n, attempts, dtype=np.int64), "error": np.full(n, None, dtype=object),
        "details": np.full(n, None, dtype=object), "worker": np.full(n, worker, dtype=object),
        "at_time": np.full(n, now)})


class Recorder:
    """Rows of one run on their way into the catalog (and result bytes into the store)."""

    def __init__(self, prep: Prepared, run_id: str, catalog: Any, store: Any) -> None:
        self.prep = prep
        self.run_id = run_id
        self.catalog = catalog
        self.store = store
        # the catalog's text of each parameter set, encoded once: every symbol's tasks share the job's dicts
        encode = json.JSONEncoder(sort_keys=True).encode  # json.dumps(p, sort_keys=True), one encoder for all
        self.texts = {id(p): encode(p) for p in prep.job.params_list}
        self.env_texts: dict[str, str] = {}  # each worker's environment, as the catalog's text
        self.task_rows: list[dict[str, Any]] = []
        self.result_rows: list[dict[str, Any]] = []
        self.log_rows: list[dict[str, Any]] = []
        self._writer: ThreadPoolExecutor | None = None
        self._writes: list[Future[Any]] = []
        self._recording: Future[Any] | None = None  # the writer's latest catalog write
        self._files_queued = False  # result files queued for the writer since its last queued record
        self._last_flush = time.monotonic()
        self._last = _LastRows()
        self._bodies: dict[str, tuple[bytes, str]] = {}  # result files that came as bytes, not stored yet
        # --force: the store as it was before the run, and the results workers stored since
        self._before: Any = None
        self._forced: list[tuple[str, str]] = []
        self._open_shards: dict[str, dict[str, Any]] = {}  # ``_of_shard``: params of the tasks not reported yet
        if prep.request.force:
            from backtest.store.results import ResultStore

            self._before = ResultStore(prep.root, snapshot=True)
            self._before.packs()
        # results recomputed to other bits than the intact ones stored under their keys:
        # (key, what differs, worker); appended by the writer thread and the event loop
        self.differs: list[tuple[str, str, str]] = []

    @cached_property
    def by_key(self) -> dict[str, Task]:
        """The run's tasks by key, made when an outcome first needs one (a fully cached rerun
        never does: a million tasks' dict is 0.4 s). Of a large job's (a ``TaskTable``), only the
        tasks its shards hold: the cached ones have no outcome."""
        if isinstance(self.prep.tasks, TaskTable):
            return {key: t for shard in self.prep.shards for key, t in _shard_tasks(shard.spec).items()}
        return {t.key: t for t in self.prep.tasks}

    def _of_shard(self, shard: str, keys: Sequence[str]) -> tuple[Any, list[dict[str, Any]]]:
        """(the symbol of each of ``keys``, as a NumPy column; their parameter sets), all tasks of
        shard ``shard``. Of a large job (a ``TaskTable``) they are read from the shard's spec, one
        shard at a time while its outcomes come, with no ``Task`` made (a million tasks: ~1.5 s)
        nor a dict of every task of the run (~100 MB); from ``by_key`` otherwise, or once it is made."""
        import numpy as np

        # (None for a shard that was not planned: a walk-forward's later ones)
        spec = self._specs.get(shard) if isinstance(self.prep.tasks, TaskTable) and "by_key" not in self.__dict__ \
            else None
        if spec is not None:
            open_ = self._open_shards.get(shard)
            if open_ is None:
                open_ = self._open_shards[shard] = {key: p for g in spec.groups for key, p in g.tasks}
            if all(k in open_ for k in keys):  # (reported twice: never, the executors report a task once)
                params = [open_.pop(k) for k in keys]
                if not open_:
                    del self._open_shards[shard]
                return np.full(len(keys), spec.symbol, dtype=object), params
        tasks = [self.by_key[k] for k in keys]
        return np.array([t.symbol for t in tasks], dtype=object), [t.params for t in tasks]

    @cached_property
    def _specs(self) -> dict[str, Any]:
        return {shard.id: shard.spec for shard in self.prep.shards}

    # rows ---------------------------------------------------------------------------------------
    def _params_text(self, params: dict[str, Any]) -> str:
        return self.texts.get(id(params)) or json.dumps(params, sort_keys=True)

    def row(self, t: Task, *rest: Any) -> dict[str, Any]:
        return task_row(t, self._params_text(t.params), *rest)

    def cached_rows(self, unindexed: Container[str], cached: Sequence[Task] | None = None,
                    now: float | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Task rows of the cached tasks (``cached``, default the run's planned ones), and metric
        rows of those the catalog does not index yet (``unindexed``; e.g. after the catalog was
        deleted): they are indexed now."""
        from backtest.catalog import result_row
        from backtest.catalog.staging import NUMPY_ROWS
        from backtest.store.results import decode_metrics

        now = time.time() if now is None else now
        cached = self.prep.cached if cached is None else cached
        tasks: list[Any]
        if isinstance(cached, TaskTable):
            tasks = [self._table_columns(cached, now)]
        elif len(cached) > NUMPY_ROWS:  # as columns: no dict a row
            tasks = [self._done_columns(cached, True, 0, None, now)]
        else:
            tasks = [self.row(t, "done", True, 0, None, None, None, now) for t in cached]
        results = []
        wanted = [k for k in keys_of(cached) if k in unindexed] if unindexed else []
        for _, data in self.store.read_many(wanted) if wanted else ():  # (read_many reads the packs)
            header, metrics = decode_metrics(data)
            results.append(result_row(header, metrics, now))
        return tasks, results

    def start(self, unindexed: set[str]) -> None:
        """The run is recorded and has work: gather the cached tasks' rows (and metric rows of
        those the catalog does not index, ``unindexed``), start the writer."""
        self.task_rows, self.result_rows = self.cached_rows(unindexed)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bt-results")
        # The catalog stages metric rows ~40 % faster as NumPy columns (``catalog._stage``);
        # planning does not need NumPy, so the writer imports it now, while the workers start up.
        self._writer.submit(importlib.import_module, "numpy")

    # outcomes -----------------------------------------------------------------------------------
    def task_done(self, ev: TaskDone, attempt: int, now: float) -> None:
        from backtest.catalog import result_row
        from backtest.store.results import decode_metrics

        assert self._writer is not None
        if not ev.stored:
            self._bodies[ev.key] = (ev.body, ev.worker)
            self._files_queued = True
        elif self._before is not None:
            self._forced.append((ev.key, ev.worker))
        task = self.by_key[ev.key]
        if ev.metrics is None:
            header, metrics = decode_metrics(ev.body)
            self.result_rows.append(result_row(header, metrics, now))
        else:  # stored by the worker, reported by its metrics: the header is known here
            header = {"key": ev.key, "symbol": task.symbol, "params": self.prep.job.strategy_params(task.params),
                      "n_trades": ev.n_trades, "env": ev.env}
            env_text = self.env_texts.get(ev.worker) or self.env_texts.setdefault(
                ev.worker, json.dumps(ev.env, sort_keys=True))
            text = None if self.prep.job.axes else self.texts.get(id(task.params))
            self.result_rows.append(result_row(header, ev.metrics, now, text, env_text))
        self.task_rows.append(self.row(task, "done", False, attempt, None, None, ev.worker, now))

    def tasks_done(self, ev: TasksDone, now: float) -> None:
        """A batch of results a worker stored itself: their task and result rows as columns."""
        import numpy as np

        from backtest.catalog import METRICS, OPTIONAL_METRICS
        from backtest.catalog.staging import Columns

        if self._before is not None:
            self._forced.extend((k, ev.worker) for k in ev.keys)
        n = len(ev.keys)
        symbols, of = self._of_shard(ev.shard, ev.keys)
        block = _done_block(np.array(ev.keys, dtype=object), symbols,
                            np.array([self._params_text(p) for p in of], dtype=object), False, ev.attempt, ev.worker,
                            now)
        self.task_rows.append(block)
        keys, params = block["key"], block["params"]
        env = ev.env or {}
        env_text = self.env_texts.get(ev.worker) or self.env_texts.setdefault(ev.worker, json.dumps(env, sort_keys=True))
        if self.prep.job.axes:  # the result's params are the strategy's only
            strategy_params = self.prep.job.strategy_params
            params = np.array([json.dumps(strategy_params(p), sort_keys=True) for p in of], dtype=object)
        values = np.frombuffer(ev.values, dtype=np.float64).reshape(n, len(ev.names)) if n else np.empty((0, 0))
        where = {m: i for i, m in enumerate(ev.names)}
        missing = np.full(n, np.nan)
        metrics = {m: values[:, where[m]].copy() if m in where else missing for m in (*METRICS, *OPTIONAL_METRICS)}
        self.result_rows.append(Columns(n, {
            "key": keys, "symbol": symbols, "params": params, "n_trades": np.array(ev.n_trades, dtype=np.int64),
            "env": np.full(n, env_text, dtype=object), "recorded": np.full(n, now), **metrics}))

    def _done_columns(self, tasks: Sequence[Task], cached: bool, attempts: int, worker: str | None,
                      now: float) -> Any:
        """Task rows of ``tasks``, done, as one ``Columns`` block."""
        import numpy as np


        return _done_block(np.array([t.key for t in tasks], dtype=object),
                           np.array([t.symbol for t in tasks], dtype=object),
                           np.array([self._params_text(t.params) for t in tasks], dtype=object), cached, attempts, worker,
                           now)

    def _table_columns(self, table: TaskTable, now: float) -> Any:
        """Task rows of the cached tasks of ``table``, done, as one ``Columns`` block: each column
        taken from the job's few texts by the table's codes, with no Python object made a row."""
        import numpy as np


        params = np.array([self.texts[id(p)] for p in self.prep.job.params_list], dtype=object)
        return _done_block(np.array(table.keys(), dtype=object),
                           np.array(table.symbols, dtype=object)[np.frombuffer(table.syms, dtype=np.int32)],
                           params[np.frombuffer(table.sets, dtype=np.int32)], True, 0, None, now)

    def _write_pack(self, bodies: dict[str, tuple[bytes, str]]) -> None:
        """Store result files that came as bytes in one pack (a file that is not a canonical
        result file is stored, and checked, as a pack of its own)."""
        from backtest.store.packs import PackWriter

        pack = PackWriter()
        for key, (body, worker) in bodies.items():
            if not pack.add_file(body):
                self._differs(self.store.write(key, body), key, worker)
        if len(pack):
            found = self.store.write_pack(pack, {k: b for k, (b, _) in bodies.items()})
            for key, what in found.items():
                self._differs(what, key, bodies[key][1])

    def _compare_forced(self, done: list[tuple[str, str]]) -> None:
        """``--force``: results that workers stored themselves, compared with the ones stored
        before the run under the same keys."""
        from backtest.store.results import difference

        assert self._before is not None
        self.store.refresh()
        for key, worker in done:
            if self._before.digest(key) in (None, self.store.digest(key)):
                continue  # nothing stored before, or the same bytes (their digests say so)
            old = self._before.stored_bytes(key)
            if old is not None and (new := self.store.read_bytes(key)) != old:
                self._differs(difference(old, key, new), key, worker)

    def _differs(self, what: str | None, key: str, worker: str) -> None:
        if what:
            self.differs.append((key, what, worker))

    def task_failed(self, ev: TaskFailed, attempt: int, now: float) -> None:
        self.task_rows.append(self.row(self.by_key[ev.key], "failed", False, attempt, ev.error, ev.details,
                                       ev.worker, now))

    def shard_failed(self, ev: ShardFailed, now: float) -> None:
        detail = "\n".join(ev.errors)
        for k in ev.keys:
            self.task_rows.append(self.row(self.by_key[k], "failed", False, len(ev.errors), ev.errors[-1], detail,
                                           None, now))

    def log(self, ev: ShardLog | WorkerNote, now: float) -> None:
        if isinstance(ev, ShardLog):
            self.log_rows.append({"shard": ev.shard, "worker": ev.worker, "text": ev.text, "at_time": now})
        else:
            self.log_rows.append({"shard": None, "worker": ev.worker, "text": ev.message, "at_time": now})

    # writing ------------------------------------------------------------------------------------
    def maybe_flush(self, workers: list[WorkerStatus]) -> None:
        """Record what was gathered every ``FLUSH_SECONDS`` (``FLUSH_ROWS`` at a time when rows
        come fast: ``BUSY_ROWS``), and as soon as a worker has nothing left to do (near the end of
        a run its core is free), so that little is left to record once all is in: that write
        waits a little for the run's last rows. One catalog write at a time, so that the last
        rows, which end the run, are never recorded before others."""
        rows = sum(getattr(r, "n", 1) for r in self.task_rows)  # (a ``Columns`` block holds n rows)
        near_end = rows >= 100 and any(w.state == "idle" for w in workers)
        due = near_end or flush_due(rows, time.monotonic() - self._last_flush)
        if due and (self._recording is None or self._recording.done()):
            if near_end:
                self._last.expect()
            self.flush(background=True, aligned=not near_end and rows >= FLUSH_ROWS)

    def flush(self, update: dict[str, Any] | None = None, *, background: bool = False, aligned: bool = False) -> None:
        """Record the rows gathered so far. In the background (during the run) the writer thread
        records them after the result files queued before them, so the loop goes on taking
        events meanwhile; the last flush waits. ``aligned``: only whole row groups of them
        (``ROW_GROUP``), when they can be cut there (``_cut``); the rest wait for the next write."""
        bodies, self._bodies = self._bodies, {}
        forced, self._forced = self._forced, []
        if background:
            assert self._writer is not None
            if bodies:
                self._writes.append(self._writer.submit(self._write_pack, bodies))
            if forced:
                self._writes.append(self._writer.submit(self._compare_forced, forced))
        pending = []
        for w in self._writes:
            if w.done():
                w.result()  # a failed write or record surfaces here
            else:
                pending.append(w)
        self._writes = pending
        kept: tuple[list[Any], list[Any]] = ([], [])
        if aligned:
            self.task_rows, self.result_rows, kept = _cut(self.task_rows, self.result_rows, ROW_GROUP)
        rows: tuple[Any, ...] = (self.run_id, self.task_rows, self.result_rows, self.log_rows, update)
        (self.task_rows, self.result_rows), self.log_rows = kept, []
        self._last_flush = time.monotonic()
        if background:
            assert self._writer is not None
            if any(rows[1:]):
                mark(f"recording {len(rows[1])} task rows in the background")
                self._recording = self._writer.submit(self.catalog.record, *rows, more=self._last.take)
                self._writes.append(self._recording)
                self._files_queued = False
            return
        for w in self._writes:
            w.result()
        self._writes = []
        if bodies:
            self._write_pack(bodies)
        if forced:
            self._compare_forced(forced)
        if self._last.taken:
            mark("recorded the last rows with the background ones")
            return
        mark(f"recording {len(rows[1])} task rows")
        self.catalog.record(*rows)

    def post_last(self, final_update: dict[str, Any]) -> None:
        """The run ended: the writer thread, if it is still recording, takes the last rows into
        the same transaction (never while result files they name wait behind it in its queue)."""
        if not self._files_queued:
            self._last.post((self.task_rows, self.result_rows, self.log_rows, final_update))

    def none_coming(self) -> None:
        """(If the last rows were not posted) a write waiting for them goes on at once."""
        self._last.none_coming()

    def stop_writer(self) -> None:
        self._last.none_coming()
        if self._writer is not None:
            self._writer.shutdown(wait=True)


def _cut(tasks: list[Any], results: list[Any], group: int) -> tuple[list[Any], list[Any], tuple[list[Any], list[Any]]]:
    """(task rows, result rows) to write now, a multiple of ``group`` rows each, and (those left for
    later). Only rows that came as pairs of ``Columns`` blocks (a batch of results stored by a
    worker: its task rows and result rows, the same keys in the same order) are cut, so that a
    task row is never written without its result row; anything else is written whole."""
    if len(tasks) != len(results) or not all(getattr(t, "n", -1) == getattr(r, "n", -2) and t["key"] is r["key"]
                                             for t, r in zip(tasks, results, strict=True)):
        return tasks, results, ([], [])
    total = sum(t.n for t in tasks)
    take = total - total % group
    if take in (0, total):
        return tasks, results, ([], [])
    now_t: list[Any] = []
    now_r: list[Any] = []
    for i, (t, r) in enumerate(zip(tasks, results, strict=True)):
        if take == 0:
            return now_t, now_r, (tasks[i:], results[i:])
        if t.n <= take:
            now_t.append(t)
            now_r.append(r)
            take -= t.n
            continue
        (t1, r1), (t2, r2) = _split_pair(t, r, take)
        return [*now_t, t1], [*now_r, r1], ([t2, *tasks[i + 1:]], [r2, *results[i + 1:]])
    return now_t, now_r, ([], [])


def _split_pair(tasks: Any, results: Any, at: int) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """A pair of ``Columns`` blocks cut after row ``at``: ((first task rows, first result rows),
    (the other task rows, the other result rows)), each pair sharing its key column as before."""
    from backtest.catalog.staging import Columns

    def part(rows: slice, n: int) -> tuple[Any, Any]:
        key = tasks["key"][rows]
        t, r = (Columns(n, {name: key if name == "key" else col[rows] for name, col in block.items()})
                for block in (tasks, results))
        return t, r

    return part(slice(None, at), at), part(slice(at, None), tasks.n - at)


class _LastRows:
    """A run's last rows, for the catalog writer thread to take into the transaction it is
    writing (``Catalog.record``'s ``more``). Once the run is near its end (``expect``), the
    writer waits for them a little (``LAST_ROWS_WAIT`` at most, holding the catalog) rather than
    commit just before they come: recording them in a connection of their own would cost more."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._rows: Any = None
        self._expected = False
        self._final = False  # nothing more will be posted
        self.taken = False

    def expect(self) -> None:
        with self._cond:
            self._expected = True

    def post(self, rows: Any) -> None:
        with self._cond:
            self._rows = rows
            self._final = True
            self._cond.notify_all()

    def none_coming(self) -> None:
        with self._cond:
            self._final = True
            self._cond.notify_all()

    def take(self) -> Any:
        with self._cond:
            if self._expected:
                self._cond.wait_for(lambda: self._final, LAST_ROWS_WAIT)
            rows, self._rows = self._rows, None
            self.taken = self.taken or rows is not None
            return rows

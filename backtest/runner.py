"""Orchestration of one `bt run`: load, resolve, plan, execute, record.

Everything that can be wrong with the input is found in ``prepare`` — before a run is recorded or
a worker started. ``execute`` then records the run, streams outcomes from the executor into the
results store (the source of truth, written first) and the catalog (flushed in short batches),
and ends the run as done, failed or interrupted. Killed at any point, it leaves complete result
files only; the next run of the same job finds them and computes only what is missing.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backtest import paths
from backtest.errors import BtError, DataError, PlanError, UsageError
from backtest.executors.base import (
    Executor,
    ExecutorOptions,
    Shard,
    ShardFailed,
    ShardFinished,
    ShardLog,
    StrategySource,
    TaskDone,
    TaskFailed,
    WorkerNote,
    WorkerStatus,
)
from backtest.plan import Job, Task, make_shards, make_tasks, parse_range
from backtest.trace import mark

FLUSH_SECONDS = 2.0
LAST_ROWS_WAIT = 0.3  # seconds a catalog write near a run's end waits for the last rows (see _LastRows)


@dataclass
class RunRequest:
    strategy: Path
    strategy_name: str | None = None
    start: str | None = None
    end: str | None = None
    symbols: list[str] | None = None
    universe: Path | None = None
    params: list[str] = field(default_factory=list)
    executor: str | None = None
    hosts: Path | None = None
    workers: int | None = None
    timeout: float | None = None
    max_memory: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    force: bool = False
    accept_new_hosts: bool = False


@dataclass
class Prepared:
    request: RunRequest
    job: Job
    tasks: list[Task]
    cached: list[Task]
    shards: list[Shard]
    skipped_symbols: list[str]
    executor_url: str
    root: Path
    parts: dict[tuple[str, int], list[tuple[str, str]]]


@dataclass
class Progress:
    run_id: str
    total: int
    cached: int
    computed: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)
    workers: list[WorkerStatus] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.cached + self.computed + self.failed


@dataclass
class RunSummary:
    run_id: str
    status: str  # done | failed | interrupted
    tasks: int
    computed: int
    cached: int
    failed: int
    seconds: float
    message: str = ""

    @property
    def exit_code(self) -> int:
        return {"done": 0, "failed": 1, "interrupted": 130}[self.status]

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "status": self.status, "tasks": self.tasks, "computed": self.computed,
                "cached": self.cached, "failed": self.failed, "seconds": round(self.seconds, 3)}


def _symbols(req: RunRequest, store: Any) -> list[str]:
    if req.symbols and req.universe:
        raise UsageError("give either --symbols or --universe, not both")
    if req.universe:
        try:
            text = req.universe.read_text()
        except OSError as exc:
            raise UsageError(f"cannot read the universe file {req.universe}: {exc.strerror}") from exc
        syms = [s.strip().upper() for line in text.splitlines() for s in line.split("#")[0].replace(",", " ").split()]
        if not syms:
            raise UsageError(f"the universe file {req.universe} lists no symbols; put one symbol per line")
        return list(dict.fromkeys(syms))
    if req.symbols:
        syms = [s.strip().upper() for s in req.symbols if s.strip()]
        if not syms:
            raise UsageError("--symbols is empty; give symbols like --symbols AAPL,MSFT")
        return list(dict.fromkeys(syms))
    syms = store.symbols()
    if not syms:
        raise PlanError("the data store is empty; import data with `bt data import FILE` or try `bt data demo`")
    return list(syms)


def executor_url(req: RunRequest) -> str:
    """The executor URL of a request; ``--hosts FILE`` is ``ssh://@FILE``. A hosts file or an
    ``ssh://`` URL is read and checked here, so that ``prepare`` rejects a bad one (naming every
    bad line) before a run is recorded."""
    if req.hosts and req.executor:
        raise UsageError("give either --hosts or --executor, not both")
    if req.hosts:
        from backtest.farm.hostsfile import read_hosts_file

        read_hosts_file(req.hosts)
        return f"ssh://@{req.hosts}"
    if req.executor:
        if req.executor.startswith("ssh://"):
            from backtest.farm.hostsfile import parse_ssh_url

            parse_ssh_url(req.executor)
        return req.executor
    if req.workers is not None:
        if req.workers < 1:
            raise UsageError("--workers must be at least 1")
        return f"local://{req.workers}"
    return "local://"


def start_early(req: RunRequest, root: Path | None = None) -> Executor | None:
    """Start the executor's workers from the strategy's source text, before the strategy is even
    imported here, so that worker start-up (imports, numba) overlaps the coordinator's planning.
    Returns None when that is not possible (the checks in ``prepare`` then report why)."""
    from backtest.executors import from_url
    from backtest.hashing import sha256_hex

    try:
        source = req.strategy.read_bytes().decode("utf-8")
        url = executor_url(req)
        ex = from_url(url, ExecutorOptions(
            data_root=root or paths.root(), workers=req.workers, timeout=req.timeout, max_memory=req.max_memory,
            accept_new_hosts=req.accept_new_hosts))
    except (OSError, UnicodeDecodeError, BtError):
        return None
    ex.start(StrategySource(sha256_hex(source), source, req.strategy.name, req.strategy_name or ""))
    return ex


def load_source(path: Path, name: str | None) -> tuple[Any, StrategySource]:
    from backtest.strategy import load_strategy

    cls = load_strategy(path, name)
    return cls, StrategySource(cls.__bt_source_hash__, cls.__bt_source__, Path(cls.__bt_filename__).name, cls.__name__)


def prepare(req: RunRequest, root: Path | None = None) -> Prepared:
    """Check everything and plan; raises a BtError (exit 2) on bad input, records nothing."""
    from backtest.data import Store
    from backtest.engine.settings import SimSettings
    from backtest.results import ResultStore

    root = root or paths.root()
    url = executor_url(req)
    from backtest.data.bars_cache import limit_bytes
    from backtest.executors import SCHEMES

    limit_bytes()  # a bad BT_BARS_CACHE_MB is one error here, not one per shard in the workers

    if url.partition("://")[0] not in SCHEMES:
        from backtest.executors import from_url

        from_url(url, ExecutorOptions(data_root=root))  # raises the "unknown scheme" error
    source, params_list, warmups = grid_of(req, root)
    settings = SimSettings(**req.settings).to_dict()
    start_ns, end_ns = parse_range(req.start, req.end)
    store = Store(root)
    symbols = _symbols(req, store)
    for s in symbols:
        store.partitions(s)  # unknown symbol → DataError with a suggestion
    parts: dict[tuple[str, int], list[tuple[str, str]]] = {}
    skipped: list[str] = []
    first_error: DataError | None = None
    for s in symbols:
        for w in sorted(set(warmups)):
            try:
                found = store.resolve(s, start_ns, end_ns, w)
            except DataError as exc:
                first_error = first_error or exc
                skipped.append(s)
                break
            parts[(s, w)] = [(p.path, p.sha256) for p in found]
    if len(skipped) == len(symbols):
        raise PlanError(str(first_error) if len(symbols) == 1 else
                        f"no data in the date range for any of the {len(symbols)} symbols ({first_error})")
    job = Job(source, params_list, warmups, [s for s in symbols if s not in skipped], start_ns, end_ns, settings)
    tasks = make_tasks(job, parts)
    results = ResultStore(root)
    have = set() if req.force else results.existing([t.key for t in tasks])
    todo = [t for t in tasks if t.key not in have]
    cached = [t for t in tasks if t.key in have]
    workers = _worker_count(url)
    shards = make_shards(job, todo, parts, workers)
    remember_grid(req, root, source, params_list, warmups)
    return Prepared(req, job, tasks, cached, shards, skipped, url, root, parts)


def _grid_cache(req: RunRequest, root: Path, code_hash: str) -> Path:
    from backtest import ENGINE_VERSION, __version__
    from backtest.hashing import token

    key = token({"bt": __version__, "engine": ENGINE_VERSION, "code": code_hash, "name": req.strategy_name,
                 "params": list(req.params)})
    return root / "grids" / f"{key}.json"


def _read_source(req: RunRequest) -> str | None:
    try:
        return req.strategy.read_bytes().decode("utf-8")  # exactly as load_strategy reads it
    except (OSError, UnicodeDecodeError):
        return None  # load_strategy reports it properly


def grid_cached(req: RunRequest, root: Path | None = None) -> bool:
    """Whether this strategy file and these --param specs were expanded before (see ``grid_of``)."""
    from backtest.strategy import source_hash

    text = _read_source(req)
    return text is not None and _grid_cache(req, root or paths.root(), source_hash(text)).is_file()


def grid_of(req: RunRequest, root: Path) -> tuple[StrategySource, list[dict[str, Any]], list[int]]:
    """The strategy's parameter grid and warm-ups. Expanding them imports the strategy (and numba);
    the result depends only on the source, the --param specs and bt's version, so it is kept by
    their hash and a rerun plans without importing the strategy at all."""
    from backtest.strategy import expand_grid, parse_param_specs, source_hash, warmup_bars

    text = _read_source(req)
    if text is not None:
        path = _grid_cache(req, root, source_hash(text))
        try:
            saved = json.loads(path.read_text())
            src = StrategySource(source_hash(text), text, req.strategy.name, saved["name"])
            return src, saved["params_list"], saved["warmups"]
        except (OSError, ValueError, KeyError):
            pass
    cls, src = load_source(req.strategy, req.strategy_name)
    params_list = expand_grid(cls, parse_param_specs(cls, req.params))
    warmups = [int(warmup_bars(cls, p)) for p in params_list]
    return src, params_list, warmups


def remember_grid(req: RunRequest, root: Path, src: StrategySource, params_list: list[dict[str, Any]],
                  warmups: list[int]) -> None:
    """Store what ``grid_of`` expanded, once the whole job has been checked (bad input leaves nothing)."""
    from backtest.fsutil import write_once
    from backtest.strategy import source_hash

    text = _read_source(req)
    if text is None or src.hash != source_hash(text):
        return
    write_once(_grid_cache(req, root, src.hash),
               json.dumps({"name": src.name, "params_list": params_list, "warmups": warmups}).encode())


def _worker_count(url: str) -> int:
    scheme, _, rest = url.partition("://")
    if scheme == "local":
        from backtest.executors.local import cores

        return int(rest) if rest.isdigit() else cores()
    if scheme == "inline":
        return 1
    return 8  # remote farms: planned for several workers; shards are handed out as they free up


def new_run_id(job: Job) -> str:
    from backtest.hashing import token

    stem = "".join(c if c.isalnum() or c == "_" else "-" for c in Path(job.strategy.filename).stem.lower()).strip("-")
    return f"{stem[:24] or 'run'}-{token([job.strategy.hash, time.time_ns(), os.getpid()])[:6]}"


def _pid_alive(pid: int | None, host: str | None) -> bool:
    if host != socket.gethostname() or not pid:
        return True  # another machine's coordinator: cannot tell, leave it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


OnProgress = Callable[[Progress], None]


def execute(prep: Prepared, on_progress: OnProgress | None = None, executor: Executor | None = None) -> RunSummary:
    """Record the run, compute what is missing, record every outcome; never raises on task failures."""
    from backtest.catalog import Catalog, result_row
    from backtest.executors import from_url
    from backtest.results import ResultStore, decode_metrics

    mark("planned; recording the run")
    t0 = time.monotonic()
    req, job = prep.request, prep.job
    catalog = Catalog(prep.root / "catalog.duckdb")
    store = ResultStore(prep.root)
    run_id = new_run_id(job)
    progress = Progress(run_id, total=len(prep.tasks), cached=len(prep.cached))
    save_source(prep.root, job.strategy)
    by_key = {t.key: t for t in prep.tasks}
    # the catalog's text of each parameter set, encoded once: every symbol's tasks share the job's dicts
    texts = {id(p): json.dumps(p, sort_keys=True) for p in job.params_list}
    env_texts: dict[str, str] = {}  # each worker's environment, as the catalog's text

    def task_row(t: Task, *rest: Any) -> dict[str, Any]:
        return _task_row(t, texts.get(id(t.params)) or json.dumps(t.params, sort_keys=True), *rest)

    def cached_rows(known: set[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Task rows of the cached tasks, and metric rows of those the catalog does not index yet
        (e.g. after the catalog was deleted): they are indexed now."""
        now = time.time()
        tasks = [task_row(t, "done", True, 0, None, None, None, now) for t in prep.cached]
        results = []
        for t in prep.cached:
            if t.key not in known:
                header, metrics = decode_metrics(store.read_bytes(t.key))
                results.append(result_row(header, metrics, now))
        return tasks, results

    def all_cached(known: set[str]) -> Any:
        tasks, results = cached_rows(known)
        return tasks, results, [], {"status": "done", "finished": time.time(), "computed": 0, "failed": 0,
                                    "seconds": time.monotonic() - t0}

    known = catalog.start_run({
        "run_id": run_id, "created": time.time(), "strategy": job.strategy.name,
        "strategy_file": str(req.strategy), "code_hash": job.strategy.hash,
        "job_hash": catalog.save_job(json.dumps({
            "symbols": job.symbols, "params": job.params_list, "warmups": job.warmups, "start_ns": job.start_ns,
            "end_ns": job.end_ns, "parts": [[s, w, files] for (s, w), files in prep.parts.items()]})),
        "settings": json.dumps(job.settings, sort_keys=True), "executor": prep.executor_url,
        "status": "running", "tasks": len(prep.tasks), "computed": 0, "cached": len(prep.cached), "failed": 0,
        "pid": os.getpid(), "host": socket.gethostname(),
        # every partition the run's tasks read, computed or cached
        "data_hashes": json.dumps(sorted({h for files in prep.parts.values() for _, h in files})),
    }, [t.key for t in prep.cached], _pid_alive, then=None if prep.shards else all_cached)
    if not prep.shards:  # nothing to compute: the whole run was recorded in that one transaction
        summary = RunSummary(run_id, "done", len(prep.tasks), 0, len(prep.cached), 0, time.monotonic() - t0, "")
        mark("recorded")
        if on_progress:
            on_progress(progress)
        return summary
    task_rows, result_rows = cached_rows(known)
    log_rows: list[dict[str, Any]] = []
    writes: list[Any] = []
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bt-results")
    # The catalog stages metric rows ~40 % faster as NumPy columns (``catalog._stage``); planning
    # no longer needs NumPy, so the writer imports it now, while the workers start up.
    writer.submit(importlib.import_module, "numpy")
    last = _LastRows()
    recording: list[Any] = [None]  # the writer's latest catalog write (a Future)
    files_queued = False  # result files queued for the writer since its last queued record
    attempts: dict[str, int] = {}
    status = "done"
    message = ""
    ex = executor
    last_flush = time.monotonic()
    ended = False
    seconds = 0.0
    final_update: dict[str, Any] = {}

    def flush(update: dict[str, Any] | None = None, *, background: bool = False) -> None:
        """Record the rows gathered so far. In the background (during the run) the writer thread
        records them after the result files queued before them (the catalog never names a result
        that is not stored), so the loop goes on taking events meanwhile; the last flush waits."""
        nonlocal task_rows, result_rows, log_rows, last_flush, writes, files_queued
        pending = []
        for w in writes:
            if w.done():
                w.result()  # a failed write or record surfaces here
            else:
                pending.append(w)
        writes = pending
        rows = (run_id, task_rows, result_rows, log_rows, update)
        task_rows, result_rows, log_rows = [], [], []
        last_flush = time.monotonic()
        if background:
            if any(rows[1:]):
                mark(f"recording {len(rows[1])} task rows in the background")
                recording[0] = writer.submit(catalog.record, *rows, more=last.take)
                writes.append(recording[0])
                files_queued = False
            return
        for w in writes:
            w.result()
        writes = []
        if last.taken:
            mark("recorded the last rows with the background ones")
            return
        mark(f"recording {len(rows[1])} task rows")
        catalog.record(*rows)

    try:
        if prep.shards:
            if ex is None:
                ex = from_url(prep.executor_url, ExecutorOptions(
                    data_root=prep.root, workers=req.workers, timeout=req.timeout, max_memory=req.max_memory,
                    accept_new_hosts=req.accept_new_hosts))
                ex.start(job.strategy)
            if ex.strategy is None or ex.strategy.hash != job.strategy.hash:
                raise BtError("the strategy file changed while the run was starting; run again")
            mark(f"submitting {len(prep.shards)} shards")
            ex.submit(prep.shards)
            while not ex.finished():
                for ev in ex.poll(0.1):
                    now = time.time()
                    if isinstance(ev, TaskDone):
                        if not ev.stored:
                            writes.append(writer.submit(store.write, ev.key, ev.body))
                            files_queued = True
                        task = by_key[ev.key]
                        if ev.metrics is None:
                            header, metrics = decode_metrics(ev.body)
                            result_rows.append(result_row(header, metrics, now))
                        else:  # stored by the worker, reported by its metrics: the header is known here
                            header = {"key": ev.key, "symbol": task.symbol, "params": task.params,
                                      "n_trades": ev.n_trades, "env": ev.env}
                            env_text = env_texts.get(ev.worker) or env_texts.setdefault(
                                ev.worker, json.dumps(ev.env, sort_keys=True))
                            result_rows.append(result_row(header, ev.metrics, now, texts.get(id(task.params)), env_text))
                        task_rows.append(task_row(task, "done", False, attempts.get(ev.shard, 0) + 1,
                                                  None, None, ev.worker, now))
                        progress.computed += 1
                    elif isinstance(ev, TaskFailed):
                        task_rows.append(task_row(by_key[ev.key], "failed", False, attempts.get(ev.shard, 0) + 1,
                                                   ev.error, ev.details, ev.worker, now))
                        progress.failed += 1
                    elif isinstance(ev, ShardFailed):
                        detail = "\n".join(ev.errors)
                        for k in ev.keys:
                            task_rows.append(task_row(by_key[k], "failed", False, len(ev.errors),
                                                       ev.errors[-1], detail, None, now))
                        progress.failed += len(ev.keys)
                    elif isinstance(ev, ShardLog):
                        log_rows.append({"shard": ev.shard, "worker": ev.worker, "text": ev.text, "at_time": now})
                    elif isinstance(ev, WorkerNote):
                        progress.notes.append(f"{ev.worker}: {ev.message}")
                        log_rows.append({"shard": None, "worker": ev.worker, "text": ev.message, "at_time": now})
                    elif isinstance(ev, ShardFinished):
                        pass
                progress.workers = ex.status()
                if on_progress:
                    on_progress(progress)
                near_end = len(task_rows) >= 100 and any(w.state == "idle" for w in progress.workers)
                if (time.monotonic() - last_flush > FLUSH_SECONDS or near_end) and (
                    recording[0] is None or recording[0].done()
                ):
                    # every 2 s; and as soon as a worker has nothing left to do (near the end of
                    # a run, its core is free), so that little is left to record once all is in:
                    # that write waits a little for the run's last rows. One catalog write at a
                    # time, so that the last rows, which end the run, are never recorded before
                    # others (result files queued for the writer do not hold this up).
                    if near_end:
                        last.expect()
                    flush(background=True)
            exhausted = getattr(ex, "exhausted", None)
            if exhausted:
                status, message = "interrupted", exhausted
        ended = True
    except KeyboardInterrupt:
        status, message = "interrupted", "interrupted by Ctrl+C"
        ended = True
    finally:
        mark("last outcome in; stopping workers")
        if ended:
            if status == "done" and progress.failed:
                status = "failed"
            seconds = time.monotonic() - t0
            final_update = {"status": status, "finished": time.time(), "computed": progress.computed,
                            "failed": progress.failed, "seconds": seconds}
            if not files_queued:
                # the writer thread, if it is still recording, takes these rows into the same
                # transaction (never while result files they name wait behind it in its queue)
                last.post((task_rows, result_rows, log_rows, final_update))
        last.none_coming()  # (if not posted) a write waiting for them goes on at once
        if ex is not None:
            ex.close(cancel=status != "done")
        writer.shutdown(wait=True)
    summary = RunSummary(run_id, status, len(prep.tasks), progress.computed, progress.cached, progress.failed,
                         seconds, message)
    flush(final_update)
    mark("recorded")
    if on_progress:
        on_progress(progress)
    return summary


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


def _task_row(t: Task, params: str, status: str, cached: bool, attempts: int, error: str | None,
              details: str | None, worker: str | None, at: float) -> dict[str, Any]:
    return {"key": t.key, "symbol": t.symbol, "params": params, "status": status,
            "cached": cached, "attempts": attempts, "error": error, "details": details, "worker": worker, "at_time": at}


def prepare_started(req: RunRequest) -> tuple[Prepared, Executor | None]:
    """``prepare``, with the workers started meanwhile when work is likely (a first run of this
    strategy, or ``--force``), so that their start-up overlaps the plan; they are stopped again if
    the input is bad or nothing is missing. A rerun of a known grid plans first (in well under a
    second) and starts workers only for what is missing."""
    mark("planning")
    from backtest import forkserver

    ex = start_early(req) if req.force or not grid_cached(req) else None
    try:
        prep = prepare(req)
    except BaseException:
        if ex is not None:
            ex.close(cancel=True)
        forkserver.discard()
        raise
    if not prep.shards:
        if ex is not None:
            ex.close(cancel=True)
            ex = None
        forkserver.discard()
    return prep, ex


def run(req: RunRequest, on_progress: OnProgress | None = None) -> RunSummary:
    """Prepare and execute: the library's `bt run`."""
    prep, ex = prepare_started(req)
    return execute(prep, on_progress, ex)


def save_source(root: Path, source: StrategySource) -> None:
    """Keep the exact strategy source of every run by hash, so `bt verify` can rerun it later."""
    from backtest.fsutil import write_once

    write_once(root / "strategies" / f"{source.hash}.json", json.dumps(source.__dict__).encode())


def load_saved_source(root: Path, code_hash: str) -> StrategySource:
    path = root / "strategies" / f"{code_hash}.json"
    try:
        return StrategySource(**json.loads(path.read_text()))
    except FileNotFoundError as exc:
        raise BtError(f"the strategy source of this run ({code_hash[:12]}) is not stored; rerun the job") from exc


@dataclass
class VerifyReport:
    run_id: str
    checked: int
    mismatched: list[str]
    missing: list[str]


def verify(run_id: str, sample: int | None = None, seed: int = 0, root: Path | None = None) -> VerifyReport:
    """Recompute (a sample of) a run's done tasks in this process and compare bytes with the store."""
    import random

    from backtest.catalog import Catalog
    from backtest.executors.base import ExecutorOptions
    from backtest.executors.inline import InlineExecutor
    from backtest.plan import _shard
    from backtest.results import ResultStore

    root = root or paths.root()
    catalog = Catalog(root / "catalog.duckdb")
    run = catalog.run(run_id)
    spec = catalog.job(run)
    source = load_saved_source(root, run["code_hash"])
    parts = {(s, w): [tuple(f) for f in files] for s, w, files in spec["parts"]}
    job = Job(source, spec["params"], spec["warmups"], spec["symbols"], spec["start_ns"], spec["end_ns"],
              json.loads(run["settings"]))
    rows = [r for r in catalog.task_rows(run["run_id"]) if r["status"] == "done"]
    if sample is not None and sample < len(rows):
        rows = random.Random(seed).sample(rows, sample)
    warm = dict(zip((json.dumps(p, sort_keys=True) for p in job.params_list), job.warmups, strict=True))
    tasks = [Task(r["key"], r["symbol"], json.loads(r["params"]), warm[r["params"]]) for r in rows]
    store = ResultStore(root)
    ex = InlineExecutor(ExecutorOptions(data_root=root))
    ex.start(source)
    by_symbol: dict[str, list[Task]] = {}
    for t in tasks:
        by_symbol.setdefault(t.symbol, []).append(t)
    ex.submit([_shard(job, s, ts, parts) for s, ts in by_symbol.items()])
    mismatched, missing = [], []
    seen = set()
    while not ex.finished():
        for ev in ex.poll(0):
            if isinstance(ev, TaskDone):
                seen.add(ev.key)
                if not store.has(ev.key):
                    missing.append(ev.key)
                elif store.read_bytes(ev.key) != ev.body:
                    mismatched.append(ev.key)
            elif isinstance(ev, TaskFailed | ShardFailed):
                keys = [ev.key] if isinstance(ev, TaskFailed) else ev.keys
                mismatched.extend(keys)
                seen.update(keys)
    return VerifyReport(run["run_id"], len(tasks), mismatched, missing)

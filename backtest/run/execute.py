"""Run a prepared job: record the run, hand the shards to the executor, record every outcome.

``execute`` records the run, streams outcomes from the executor into the results store (the
source of truth, written first) and the catalog (``record.Recorder``), and ends the run as done,
failed or interrupted. Killed at any point, it leaves complete result files only; the next run of
the same job finds them and computes only what is missing.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backtest.errors import BtError
from backtest.executors.base import (
    Executor,
    ResultDiffers,
    ShardFailed,
    ShardLog,
    TaskDone,
    TaskFailed,
    WorkerNote,
)
from backtest.run.prepare import executor_options, prepare_started
from backtest.run.record import Recorder
from backtest.run.recover import recovery
from backtest.run.request import Prepared, Progress, RunRequest, RunSummary
from backtest.spec import Job
from backtest.trace import mark

OnProgress = Callable[[Progress], None]


def new_run_id(job: Job) -> str:
    from backtest.hashing import token

    stem = "".join(c if c.isalnum() or c == "_" else "-" for c in Path(job.strategy.filename).stem.lower()).strip("-")
    return f"{stem[:24] or 'run'}-{token([job.strategy.hash, time.time_ns(), os.getpid()])[:6]}"


def coordinator_alive(pid: int | None, host: str | None) -> bool:
    """Whether the coordinator that recorded a run as running may still be at it."""
    from backtest.store.fsutil import process_alive

    if host != socket.gethostname() or not pid:
        return True  # another machine's coordinator: cannot tell, leave it
    return process_alive(pid)


def _run_row(prep: Prepared, run_id: str) -> dict[str, Any]:
    from backtest.store.archive import save_job

    job = prep.job
    return {
        "run_id": run_id, "created": time.time(), "strategy": job.strategy.name,
        "strategy_file": str(prep.request.strategy), "code_hash": job.strategy.hash,
        "job_hash": save_job(prep.root, json.dumps({
            "symbols": job.symbols, "params": job.params_list, "warmups": job.warmups, "start_ns": job.start_ns,
            "end_ns": job.end_ns, "parts": [[s, w, files] for (s, w), files in prep.parts.items()],
            **({"universe": job.universe} if job.universe else {})})),
        "settings": json.dumps(job.settings, sort_keys=True), "executor": prep.executor_url,
        "status": "running", "tasks": len(prep.tasks), "computed": 0, "cached": len(prep.cached), "failed": 0,
        "pid": os.getpid(), "host": socket.gethostname(),
        # every partition the run's tasks read, computed or cached
        "data_hashes": json.dumps(sorted({h for files in prep.parts.values() for _, h in files})),
    }


def execute(prep: Prepared, on_progress: OnProgress | None = None, executor: Executor | None = None) -> RunSummary:
    """Record the run, compute what is missing, record every outcome; never raises on task failures."""
    from backtest.catalog import Catalog
    from backtest.executors import from_url
    from backtest.store.archive import save_source
    from backtest.store.results import ResultStore

    mark("planned; recording the run")
    t0 = time.monotonic()
    job = prep.job
    catalog = Catalog(prep.root / "catalog.duckdb", recover=recovery(prep.root))
    run_id = new_run_id(job)
    progress = Progress(run_id, total=len(prep.tasks), cached=len(prep.cached))
    save_source(prep.root, job.strategy)
    recorder = Recorder(prep, run_id, catalog, ResultStore(prep.root))

    def all_cached(known: set[str]) -> Any:
        tasks, results = recorder.cached_rows(known)
        return tasks, results, [], {"status": "done", "finished": time.time(), "computed": 0, "failed": 0,
                                    "seconds": time.monotonic() - t0}

    known = catalog.start_run(_run_row(prep, run_id), [t.key for t in prep.cached], coordinator_alive,
                              then=None if prep.shards else all_cached)
    if not prep.shards:  # nothing to compute: the whole run was recorded in that one transaction
        summary = RunSummary(run_id, "done", len(prep.tasks), 0, len(prep.cached), 0, time.monotonic() - t0, "")
        mark("recorded")
        if on_progress:
            on_progress(progress)
        return summary
    recorder.start(known)
    status, message = "done", ""
    ex = executor
    ended = False
    seconds = 0.0
    final_update: dict[str, Any] = {}
    try:
        if ex is None:
            ex = from_url(prep.executor_url, executor_options(prep.request, prep.root))
            ex.start(job.strategy)
        if ex.strategy is None or ex.strategy.hash != job.strategy.hash:
            raise BtError("the strategy file changed while the run was starting; run again")
        mark(f"submitting {len(prep.shards)} shards")
        ex.submit(prep.shards)
        while not ex.finished():
            for ev in ex.poll(0.1):
                now = time.time()
                if isinstance(ev, TaskDone):
                    recorder.task_done(ev, ev.attempt, now)
                    progress.computed += 1
                elif isinstance(ev, TaskFailed):
                    recorder.task_failed(ev, ev.attempt, now)
                    progress.failed += 1
                elif isinstance(ev, ShardFailed):
                    recorder.shard_failed(ev, now)
                    progress.failed += len(ev.keys)
                elif isinstance(ev, ShardLog):
                    recorder.log(ev, now)
                elif isinstance(ev, ResultDiffers):
                    recorder.differs.append((ev.key, ev.what, ev.worker))
                elif isinstance(ev, WorkerNote):
                    progress.notes.append(f"{ev.worker}: {ev.message}")
                    recorder.log(ev, now)
            progress.workers = ex.status()
            if on_progress:
                on_progress(progress)
            recorder.maybe_flush(progress.workers)
        if ex.exhausted:
            status, message = "interrupted", ex.exhausted
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
            recorder.post_last(final_update)
        recorder.none_coming()
        if ex is not None:
            ex.close(cancel=status != "done")
        recorder.stop_writer()
    set_aside = [n for n in progress.notes if ": set aside" in n]
    recorder.flush(final_update)
    differs = _differs(recorder, prep)
    if differs and status == "done":  # known only once every file is written: recorded as failed now
        status = "failed"
        message = (f"{len(differs)} results came out different from the ones stored under the same keys: "
                   "the strategy depends on something its key does not cover (code loaded by name, a file "
                   "it reads, randomness, another version of a package); the new results are kept")
        catalog.record(run_id, logs=[{"shard": None, "worker": "bt", "text": f"{message}\n" + "\n".join(differs),
                                      "at_time": time.time()}], run_update={"status": status})
    summary = RunSummary(run_id, status, len(prep.tasks), progress.computed, progress.cached, progress.failed,
                         seconds, message, set_aside, differs)
    mark("recorded")
    if on_progress:
        on_progress(progress)
    return summary


def _differs(recorder: Recorder, prep: Prepared) -> list[str]:
    """One line for each result that came out different from the one stored under its key."""
    lines = []
    for key, what, worker in recorder.differs:
        task = recorder.by_key.get(key)
        about = f"{task.symbol} {json.dumps(task.params, sort_keys=True)}" if task else "?"
        lines.append(f"{key[:12]} ({about}) on {worker}: {what}")
    return lines


def run(req: RunRequest, on_progress: OnProgress | None = None) -> RunSummary:
    """Prepare and execute: the library's `bt run`."""
    prep, ex = prepare_started(req)
    return execute(prep, on_progress, ex)

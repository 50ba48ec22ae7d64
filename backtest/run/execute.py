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
    TasksDone,
    WorkerNote,
)
from backtest.plan import keys_of
from backtest.run.prepare import executor_options, prepare_started
from backtest.run.record import Recorder
from backtest.run.recover import recovery
from backtest.run.request import Prepared, Progress, RunRequest, RunSummary
from backtest.spec import Job, Task
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
    from backtest.store.archive import run_scope, save_job

    job = prep.job
    return {
        "run_id": run_id, "created": time.time(), "strategy": job.strategy.name,
        "strategy_file": str(prep.request.strategy), "code_hash": job.strategy.hash,
        "job_hash": save_job(prep.root, json.dumps({
            # a walk-forward's spec first: readers tell the kind of run from the file's first bytes
            **({"walk_forward": prep.wfo.to_json()} if prep.wfo is not None else {}),
            "symbols": job.symbols, "params": job.params_list, "warmups": job.warmups, "start_ns": job.start_ns,
            "end_ns": job.end_ns, "parts": [[s, w, files] for (s, w), files in prep.parts.items()],
            **({"universe": job.universe} if job.universe else {}),
            **({"axes": list(job.axes)} if job.axes else {}),
            **({"benchmark": [job.benchmark, job.benchmark_parts]} if job.benchmark else {})})),
        "scope": json.dumps(run_scope(job.symbols, len(job.params_list), job.start_ns, job.end_ns)),
        "settings": json.dumps(job.settings, sort_keys=True), "executor": prep.executor_url,
        "status": "running", "tasks": len(prep.tasks) + prep.pending, "computed": 0, "cached": len(prep.cached), "failed": 0,
        "pid": os.getpid(), "host": socket.gethostname(),
        # every partition the run's tasks read, computed or cached
        "data_hashes": json.dumps(sorted({h for files in _all_parts(prep) for _, h in files})),
        "sandbox": json.dumps({"mode": "on" if prep.request.sandbox else "off"}),
    }


def _all_parts(prep: Prepared) -> list[list[tuple[str, str]]]:
    """The file lists of every window the run reads (one for a plain run)."""
    out = list(prep.parts.values())
    if prep.wfo is not None:
        out += [files for w in prep.wfo.windows() for files in w.parts.values()]
    return out


class _Followup:
    """A walk-forward run's second stage, fed with every in-sample outcome: the out-of-sample
    tasks a fold's selection asks for are recorded as cached (stored already) or submitted."""

    def __init__(self, prep: Prepared, recorder: Recorder, progress: Progress) -> None:
        from backtest.store.results import ResultStore

        self.prep = prep
        self.recorder = recorder
        self.progress = progress
        self.store = ResultStore(prep.root)
        self.fresh: list[Task] = []
        self.submitted: list[str] = []  # keys of the out-of-sample tasks sent to be computed

    def outcome(self, ev: Any) -> None:
        from backtest.store.results import decode_metrics

        outcomes: list[tuple[str, dict[str, float] | None, float]]
        if isinstance(ev, TaskDone):
            if ev.metrics is not None:
                outcomes = [(ev.key, ev.metrics, float(ev.n_trades))]
            else:
                header, decoded = decode_metrics(ev.body)
                outcomes = [(ev.key, decoded, float(header["n_trades"]))]
        else:  # failed: not eligible
            outcomes = [(k, None, 0.0) for k in ([ev.key] if isinstance(ev, TaskFailed) else ev.keys)]
        for key, found, trades in outcomes:
            task = self.prep.stage2.outcome(key, found, trades)
            if task is not None:
                self.fresh.append(task)

    def submit(self, ex: Executor, now: float) -> None:
        """Record or submit what the outcomes since the last call decided."""
        from backtest.plan import make_shards

        fresh, self.fresh = [t for t in self.fresh if t.key not in self.recorder.by_key], []
        plan = self.prep.wfo
        self.progress.total = len(self.recorder.by_key) + len(fresh) + plan.pending()
        if not fresh:
            return
        for t in fresh:
            self.recorder.by_key[t.key] = t
        have = set() if self.prep.request.force else self.store.intact([t.key for t in fresh])[0]
        remote = self.prep.remote
        if remote is not None and not self.prep.request.force and len(have) < len(fresh):
            have |= self.store.intact(remote.pull([t.key for t in fresh if t.key not in have], self.store))[0]
        found = [t for t in fresh if t.key in have]
        tasks, results = self.recorder.cached_rows({t.key for t in found}, found, now)
        self.recorder.task_rows += tasks
        self.recorder.result_rows += results  # (the catalog keeps one row a key)
        self.progress.cached += len(tasks)
        fold_of = {t.key: cell[1] for cell, t in plan.oos.items()}
        shards = []
        for fold in sorted({fold_of[t.key] for t in fresh if t.key not in have}):
            w = plan.test[fold]
            mine = [t for t in fresh if t.key not in have and fold_of[t.key] == fold]
            shards += make_shards(w.job, mine, w.parts, 1)
        self.submitted += [k for shard in shards for k in shard.keys]
        if shards:
            mark(f"submitting {len(shards)} out-of-sample shards")
            ex.submit(shards)


def execute(prep: Prepared, on_progress: OnProgress | None = None, executor: Executor | None = None) -> RunSummary:
    """Record the run, compute what is missing, record every outcome; never raises on task failures."""
    from backtest.catalog import Catalog
    from backtest.executors import from_url
    from backtest.store.archive import save_source
    from backtest.store.results import ResultStore

    mark("planned; recording the run")
    t0 = time.monotonic()
    job = prep.job
    ex = executor
    # workers started while planning take their shards now, while the run is recorded
    early = ex is not None and bool(prep.shards) and ex.strategy is not None and ex.strategy.hash == job.strategy.hash
    # what the executor said before the loop below (workers that said hello take their first shards
    # when it is asked): handled first there
    said: list[Any] = []
    try:
        if early:
            assert ex is not None
            said += ex.poll(0.001)  # the workers' hellos: each then takes a first shard at once
            mark(f"submitting {len(prep.shards)} shards")
            ex.submit(prep.shards)
        catalog = Catalog(prep.root / "catalog.duckdb", recover=recovery(prep.root))
        run_id = new_run_id(job)
        progress = Progress(run_id, total=len(prep.tasks) + prep.pending, cached=len(prep.cached))
        save_source(prep.root, job.strategy)
        recorder = Recorder(prep, run_id, catalog, ResultStore(prep.root))
        if early:
            assert ex is not None
            said += ex.poll(0.001)

        def all_cached(unindexed: set[str]) -> Any:
            tasks, results = recorder.cached_rows(unindexed)
            return tasks, results, [], {"status": "done", "finished": time.time(), "computed": 0, "failed": 0,
                                        "seconds": time.monotonic() - t0}

        unindexed = catalog.start_run(_run_row(prep, run_id), keys_of(prep.cached), coordinator_alive,
                                      then=None if prep.shards else all_cached)
    except BaseException:
        if ex is not None:
            ex.close(cancel=True)
        raise
    if not prep.shards:  # nothing to compute: the whole run was recorded in that one transaction
        summary = RunSummary(run_id, "done", len(prep.tasks), 0, len(prep.cached), 0, time.monotonic() - t0, "",
                             remote=remote_record(prep.remote))
        mark("recorded")
        if on_progress:
            on_progress(progress)
        return summary
    recorder.start(unindexed)
    followup = _Followup(prep, recorder, progress) if prep.stage2 is not None else None
    status, message = "done", ""
    ended = False
    seconds = 0.0
    final_update: dict[str, Any] = {}
    try:
        if ex is None:
            ex = from_url(prep.executor_url, executor_options(prep.request, prep.root))
            ex.start(job.strategy)
        if ex.strategy is None or ex.strategy.hash != job.strategy.hash:
            raise BtError("the strategy file changed while the run was starting; run again")
        if not early:
            mark(f"submitting {len(prep.shards)} shards")
            ex.submit(prep.shards)
        while said or not ex.finished():
            events, said = said + ex.poll(0 if said else 0.1), []
            for ev in events:
                now = time.time()
                if isinstance(ev, TasksDone):
                    recorder.tasks_done(ev, now)
                    progress.computed += len(ev.keys)
                elif isinstance(ev, TaskDone):
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
                if followup is not None and isinstance(ev, TaskDone | TasksDone | TaskFailed | ShardFailed):
                    for one in ev.each() if isinstance(ev, TasksDone) else [ev]:
                        followup.outcome(one)
            if followup is not None:
                followup.submit(ex, time.time())
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
            sandbox = sandbox_record(prep.request.sandbox, progress.workers)
            final_update = {"status": status, "finished": time.time(), "computed": progress.computed,
                            "failed": progress.failed, "seconds": seconds,
                            "sandbox": json.dumps(sandbox, sort_keys=True)}
            if followup is not None:  # the out-of-sample tasks are known now
                final_update["tasks"] = progress.total = len(recorder.by_key) + prep.wfo.pending()
            recorder.post_last(final_update)
        recorder.none_coming()
        if ex is not None:
            ex.close(cancel=status != "done")
        recorder.stop_writer()
    set_aside = [n for n in progress.notes if ": set aside" in n]
    recorder.flush(final_update)
    if prep.remote is not None and status != "interrupted":
        mark("uploading to the remote cache")
        prep.remote.push([k for shard in prep.shards for k in shard.keys] + (followup.submitted if followup else []),
                         recorder.store)
    differs = _differs(recorder, prep)
    if differs and status == "done":  # known only once every file is written: recorded as failed now
        status = "failed"
        message = (f"{len(differs)} results came out different from the ones stored under the same keys: "
                   "the strategy depends on something its key does not cover (code loaded by name, a file "
                   "it reads, randomness, another version of a package); the new results are kept")
        catalog.record(run_id, logs=[{"shard": None, "worker": "bt", "text": f"{message}\n" + "\n".join(differs),
                                      "at_time": time.time()}], run_update={"status": status})
    summary = RunSummary(run_id, status, progress.total, progress.computed, progress.cached, progress.failed,
                         seconds, message, set_aside, differs, sandbox, remote_record(prep.remote))
    mark("recorded")
    if on_progress:
        on_progress(progress)
    return summary


def remote_record(remote: Any) -> dict[str, Any]:
    """What the shared result cache did for a run ({} without one)."""
    if remote is None:
        return {}
    return {"uri": remote.where, "read_only": remote.read_only, "fetched": remote.fetched,
            "uploaded": remote.uploaded, "uploaded_bytes": remote.uploaded_bytes, "warnings": remote.warnings()}


def sandbox_record(on: bool, workers: list[Any]) -> dict[str, Any]:
    """What the run records of its sandbox: the mode, and what each host's workers had (their
    ``backtest.worker.sandbox.Protections``, as they said in their hello)."""
    hosts: dict[str, Any] = {}
    for w in workers:
        got = w.env.get("sandbox")
        if got:
            hosts.setdefault(w.host, got)
    return {"mode": "on" if on else "off", **({"hosts": hosts} if hosts else {})}


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

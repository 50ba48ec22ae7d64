"""``bt verify``: recompute (a sample of) a run's done tasks in this process and compare bytes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backtest import paths
from backtest.executors.base import ShardFailed, TaskDone, TaskFailed
from backtest.spec import PartsFor, Task


@dataclass
class VerifyReport:
    run_id: str
    checked: int
    mismatched: list[str]
    missing: list[str]
    #: the run's data partitions that are no longer in the data store as they were (re-imported
    #: with other bars, or removed): then nothing is recomputed, and this says why
    data_changed: list[str] = field(default_factory=list)
    #: for each mismatched key, what differs (versions, trades, metrics) or why it failed
    why: dict[str, str] = field(default_factory=dict)


def verify(run_id: str, sample: int | None = None, seed: int = 0, root: Path | None = None) -> VerifyReport:
    """Rerun the run's saved source on its recorded job, in-process, and compare each result's
    bytes with the store's."""
    import random

    from backtest.catalog import Catalog
    from backtest.data import Store
    from backtest.executors.base import ExecutorOptions
    from backtest.executors.inline import InlineExecutor
    from backtest.plan import shard_of, task_index
    from backtest.store.archive import run_windows
    from backtest.store.results import ResultStore, difference

    root = root or paths.root()
    catalog = Catalog(root / "catalog.duckdb")
    run = catalog.run(run_id)
    windows = [(job, parts) for _, _, job, parts in run_windows(root, run)]
    files = {f for _, p in windows for fs in p.values() for f in fs}
    symbols = sorted({s for job, _ in windows for s in job.symbols})
    changed = Store(root).changed(symbols, files)
    changed += _damaged(root, [p for _, p in windows]) if not changed else []
    if changed:
        return VerifyReport(run["run_id"], 0, [], [], changed)
    rows = [r for r in catalog.task_rows(run["run_id"]) if r["status"] == "done"]
    if sample is not None and sample < len(rows):
        rows = random.Random(seed).sample(rows, sample)
    index = task_index(windows)
    mismatched, missing = [], []
    why: dict[str, str] = {}
    groups: dict[tuple[int, str], tuple[Any, Any, list[Task]]] = {}
    for r in rows:
        found = index.get(r["key"])
        if found is None:  # not a task its recorded job plans (the job file was changed)
            mismatched.append(r["key"])
            why[r["key"]] = "its recorded job does not plan this task"
            continue
        job, jparts, task = found
        groups.setdefault((id(job), task.symbol), (job, jparts, []))[2].append(task)
    store = ResultStore(root)
    ex = InlineExecutor(ExecutorOptions(data_root=root))
    ex.start(windows[0][0].strategy)
    ex.submit([shard_of(job, symbol, ts, jparts) for (_, symbol), (job, jparts, ts) in groups.items()])
    seen = set()
    while not ex.finished():
        for ev in ex.poll(0):
            if isinstance(ev, TaskDone):
                seen.add(ev.key)
                if not store.has(ev.key):
                    missing.append(ev.key)
                elif (stored := store.stored_bytes(ev.key)) != ev.body:
                    mismatched.append(ev.key)
                    why[ev.key] = (difference(stored, ev.key, ev.body)
                                   or "the stored result is damaged (the next bt run computes it again)")
            elif isinstance(ev, TaskFailed | ShardFailed):
                keys = [ev.key] if isinstance(ev, TaskFailed) else ev.keys
                mismatched.extend(keys)
                seen.update(keys)
                error = ev.error if isinstance(ev, TaskFailed) else (ev.errors[-1] if ev.errors else "failed")
                why.update((k, f"failed: {error}") for k in keys)
    return VerifyReport(run["run_id"], len(rows), mismatched, missing, why=why)


def _damaged(root: Path, windows: list[PartsFor]) -> list[str]:
    """The run's partitions whose bars no longer hash to what the run read (rewritten or damaged
    files the manifest still lists as they were): one line each."""
    from backtest.data import read_bars
    from backtest.errors import DataError

    files: dict[str, list[tuple[str, str]]] = {}
    for parts in windows:
        for (symbol, _), fs in parts.items():
            files.setdefault(symbol, [])
            files[symbol] += [f for f in fs if f not in files[symbol]]
    out = []
    for symbol, fs in sorted(files.items()):
        for path, sha in sorted(fs):
            try:
                read_bars(symbol, [(root / path, sha)], 0, 2**63 - 1, 0, None)
            except DataError as exc:
                out.append(f"{path}: {exc}")
    return out

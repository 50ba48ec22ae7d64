"""``bt verify``: recompute (a sample of) a run's done tasks in this process and compare bytes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

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
    from backtest.plan import _shard
    from backtest.store.archive import run_job
    from backtest.store.results import ResultStore, difference

    root = root or paths.root()
    catalog = Catalog(root / "catalog.duckdb")
    run = catalog.run(run_id)
    job, parts = run_job(root, run)
    changed = Store(root).changed(job.symbols, (f for files in parts.values() for f in files))
    changed += _damaged(root, parts) if not changed else []
    if changed:
        return VerifyReport(run["run_id"], 0, [], [], changed)
    rows = [r for r in catalog.task_rows(run["run_id"]) if r["status"] == "done"]
    if sample is not None and sample < len(rows):
        rows = random.Random(seed).sample(rows, sample)
    warm = dict(zip((json.dumps(p, sort_keys=True) for p in job.params_list), job.warmups, strict=True))
    tasks = [Task(r["key"], r["symbol"], json.loads(r["params"]), warm[r["params"]]) for r in rows]
    store = ResultStore(root)
    ex = InlineExecutor(ExecutorOptions(data_root=root))
    ex.start(job.strategy)
    by_symbol: dict[str, list[Task]] = {}
    for t in tasks:
        by_symbol.setdefault(t.symbol, []).append(t)
    ex.submit([_shard(job, s, ts, parts) for s, ts in by_symbol.items()])
    mismatched, missing = [], []
    why: dict[str, str] = {}
    seen = set()
    while not ex.finished():
        for ev in ex.poll(0):
            if isinstance(ev, TaskDone):
                seen.add(ev.key)
                if not store.has(ev.key):
                    missing.append(ev.key)
                elif store.read_bytes(ev.key) != ev.body:
                    mismatched.append(ev.key)
                    why[ev.key] = (difference(str(store.path(ev.key)), ev.key, ev.body)
                                   or "the stored file is damaged (the next bt run computes it again)")
            elif isinstance(ev, TaskFailed | ShardFailed):
                keys = [ev.key] if isinstance(ev, TaskFailed) else ev.keys
                mismatched.extend(keys)
                seen.update(keys)
                error = ev.error if isinstance(ev, TaskFailed) else (ev.errors[-1] if ev.errors else "failed")
                why.update((k, f"failed: {error}") for k in keys)
    return VerifyReport(run["run_id"], len(tasks), mismatched, missing, why=why)


def _damaged(root: Path, parts: PartsFor) -> list[str]:
    """The run's partitions whose bars no longer hash to what the run read (rewritten or damaged
    files the manifest still lists as they were): one line each."""
    from backtest.data import read_bars
    from backtest.errors import DataError

    files: dict[str, list[tuple[str, str]]] = {}
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

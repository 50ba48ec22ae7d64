"""``bt verify``: recompute (a sample of) a run's done tasks in this process and compare bytes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from backtest import paths
from backtest.executors.base import ShardFailed, TaskDone, TaskFailed
from backtest.spec import Job, Task


@dataclass
class VerifyReport:
    run_id: str
    checked: int
    mismatched: list[str]
    missing: list[str]
    #: the run's data partitions that are no longer in the data store as they were (re-imported
    #: with other bars, or removed): then nothing is recomputed, and this says why
    data_changed: list[str] = field(default_factory=list)


def changed_data(root: Path, parts: dict[tuple[str, int], list[tuple[str, str]]]) -> list[str]:
    """Which of a run's partitions (path, content hash) the data store no longer holds as they were."""
    from backtest.data import Store
    from backtest.errors import DataError

    store = Store(root)
    now: dict[str, str] = {}
    for symbol in sorted({s for s, _ in parts}):
        try:
            now.update({p.path: p.sha256 for p in store.partitions(symbol)})
        except DataError:
            pass  # the symbol was removed: all its partitions are missing below
    out = []
    for path, sha in sorted({(p, h) for files in parts.values() for p, h in files}):
        if path not in now:
            out.append(f"{path}: removed from the data store")
        elif now[path] != sha:
            out.append(f"{path}: re-imported with other bars (content {now[path][:12]}, the run read {sha[:12]})")
    return out


def verify(run_id: str, sample: int | None = None, seed: int = 0, root: Path | None = None) -> VerifyReport:
    """Rerun the run's saved source on its recorded job, in-process, and compare each result's
    bytes with the store's."""
    import random

    from backtest.catalog import Catalog
    from backtest.executors.base import ExecutorOptions
    from backtest.executors.inline import InlineExecutor
    from backtest.plan import _shard
    from backtest.store.archive import load_job, load_source
    from backtest.store.results import ResultStore

    root = root or paths.root()
    catalog = Catalog(root / "catalog.duckdb")
    run = catalog.run(run_id)
    spec = load_job(root, run)
    source = load_source(root, run["code_hash"])
    parts = {(s, w): [(f[0], f[1]) for f in files] for s, w, files in spec["parts"]}
    changed = changed_data(root, parts)
    if changed:
        return VerifyReport(run["run_id"], 0, [], [], changed)
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

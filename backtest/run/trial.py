"""``bt hosts check``'s trial: one real task run on each host, as a run would run it.

A host whose environment matches can still fail to run anything (a login shell, a launcher, a
worker that cannot start). So each such host gets a small job of its own: a temporary data root
with one synthetic symbol, a plain strategy, one shard through a worker started on the host by
the SSH executor, and the result compared bit for bit with the same task computed here.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: The trial's strategy: a moving-average filter in plain numpy (no kernel to compile on the host).
TRIAL_STRATEGY = '''
import numpy as np
from backtest.strategy import Strategy


class Trial(Strategy):
    n = 20

    def signals(self, bars):
        c = bars.close
        avg = np.convolve(c, np.ones(self.n) / self.n)[: len(c)]
        return np.where(c > avg, 1.0, 0.0)
'''

#: How long a host may take from connecting to the trial's result (a fresh worker imports numpy,
#: numba and bt).
TRIAL_SECONDS = 120.0


def _job(folder: Path) -> Any:
    """The trial's planned run in a new data root under ``folder``."""
    import numpy as np

    from backtest.data import Store
    from backtest.run.prepare import prepare
    from backtest.run.request import RunRequest

    root = folder / "bt"
    rng = np.random.default_rng(7)
    days = np.arange(np.datetime64("2020-01-01"), np.datetime64("2021-01-01"))
    ts = days.astype("datetime64[ns]").astype(np.int64)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, len(ts))))
    Store(root).import_arrays("TRIAL", ts, close, close * 1.01, close * 0.99, close, np.full(len(ts), 1000.0))
    path = folder / "trial.py"
    path.write_text(TRIAL_STRATEGY)
    # no shared result cache (BT_REMOTE_CACHE): the trial's task must be computed, on each host
    return prepare(RunRequest(strategy=path, symbols=["TRIAL"], executor="inline://", remote_cache=""), root)


def _run(ex: Any, prep: Any, seconds: float, sandbox: list[Any] | None = None) -> tuple[dict[str, bytes], list[str]]:
    """Results (key → bytes) and what went wrong, from ``ex`` running ``prep``'s shards; the
    sandbox its workers said they had is appended to ``sandbox``."""
    from backtest.executors.base import ShardFailed, TaskDone, TaskFailed, WorkerNote

    results: dict[str, bytes] = {}
    problems: list[str] = []
    deadline = time.monotonic() + seconds
    with ex:
        ex.start(prep.job.strategy)
        ex.submit(prep.shards)
        while not ex.finished() and time.monotonic() < deadline:
            for ev in ex.poll(0.2):
                if isinstance(ev, TaskDone):
                    results[ev.key] = ev.body
                elif isinstance(ev, TaskFailed):
                    problems.append(ev.error)
                elif isinstance(ev, ShardFailed):
                    problems.extend(ev.errors[-1:])
                elif isinstance(ev, WorkerNote):
                    problems.append(ev.message)
        if sandbox is not None:
            sandbox.extend(w.env["sandbox"] for w in ex.status() if w.env.get("sandbox"))
        if not ex.finished():
            problems.append(f"no result within {seconds:.0f} s")
        if getattr(ex, "exhausted", None):
            problems.append(str(ex.exhausted))
    return results, problems


def trial_hosts(specs: Sequence[Any], settings: Any, seconds: float = TRIAL_SECONDS) -> list[tuple[str, str | None]]:
    """For each host of ``specs`` (hosts-file entries): "ok (N s)" or why no task ran there, and
    what the sandbox of its worker had (``Protections.describe``; None if no worker said)."""
    from concurrent.futures import ThreadPoolExecutor

    from backtest.executors.base import ExecutorOptions
    from backtest.executors.inline import InlineExecutor
    from backtest.executors.ssh.executor import SSHExecutor
    from backtest.worker.sandbox import Protections

    if not specs:
        return []
    with tempfile.TemporaryDirectory(prefix="bt-hosts-check-") as tmp:
        prep = _job(Path(tmp))
        here, _ = _run(InlineExecutor(ExecutorOptions(data_root=prep.root)), prep, seconds)

        def one(spec: Any) -> tuple[str, str | None]:
            t0 = time.monotonic()
            ex = SSHExecutor([spec], ExecutorOptions(data_root=prep.root, max_attempts=1), settings=settings)
            boxes: list[Any] = []
            try:
                got, problems = _run(ex, prep, seconds, boxes)
            except Exception as exc:  # a host that cannot be used in any way: its own words
                return f"failed: {exc}", None
            box = Protections.from_json(boxes[0]).describe() if boxes else None
            if got and got == here:
                return f"ok ({time.monotonic() - t0:.1f} s)", box
            if got:
                return "failed: its result differs from this machine's (other versions of numpy or numba?)", box
            said = [p for p in problems if not p.startswith("ready:")]
            return "failed: " + (said[-1] if said else "no result"), box  # the last word is the summing-up one

        with ThreadPoolExecutor(max_workers=min(16, len(specs))) as pool:
            return list(pool.map(one, specs))

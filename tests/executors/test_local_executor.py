"""The local and inline executors: the shared contract plus faults with real worker processes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from contract import ExecutorContract, WorkerProcessContract, drive, processes_with

from backtest.executors.base import Executor, ExecutorOptions, ShardFailed, TaskDone, TaskFailed
from backtest.executors.inline import InlineExecutor
from backtest.executors.local import LocalExecutor


class TestLocal(WorkerProcessContract):
    __test__ = True

    def make(self, root: Path, **options: Any) -> Executor:
        return LocalExecutor(ExecutorOptions(data_root=root, workers=2, **options))

    def test_memory_cap_fails_the_hog_not_the_run(self, root: Path, faulty: Path) -> None:
        prep = self.plan(root, faulty, ["n=6:8", "mode=hog"], symbols=["AAA"])
        events = drive(self.make(root, max_memory=1_500 * 1024**2), prep)
        bad = [e for e in events if isinstance(e, TaskFailed | ShardFailed)]
        assert bad, "the hog must fail"
        text = " ".join(getattr(e, "error", "") + " ".join(getattr(e, "errors", [])) for e in bad)
        assert "MemoryError" in text or "memory" in text.lower()
        assert len([e for e in events if isinstance(e, TaskDone)]) == 2

    def test_cancel_leaves_no_workers(self, root: Path, faulty: Path) -> None:
        prep = self.plan(root, faulty, ["n=3:8", "mode=slow"])
        ex = LocalExecutor(ExecutorOptions(data_root=root, workers=2))
        ex.start(prep.job.strategy)
        ex.submit(prep.shards)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3 and not ex.finished():
            ex.poll(0.1)
        pids = [s.channel.pid for s in ex._slots if s.channel is not None]  # type: ignore[attr-defined]
        assert pids
        ex.close(cancel=True)
        time.sleep(0.2)
        assert not [p for p in pids if Path(f"/proc/{p}").exists()]
        assert not set(pids) & set(processes_with("backtest.worker"))


    def test_workers_closed_as_they_start_die_at_once(self, root: Path, faulty: Path) -> None:
        """Closing right after the start (bad input found while workers start) kills workers the
        server forks at that very moment, before they are a process group of their own: closing
        waited 5 s for such a worker's exit. Five times, as the moment varies."""
        prep = self.plan(root, faulty, ["n=3:8", "mode=slow"])
        for _ in range(5):
            ex = LocalExecutor(ExecutorOptions(data_root=root, workers=2))
            ex.start(prep.job.strategy)
            ex.submit(prep.shards)
            t0 = time.monotonic()
            ex.close(cancel=True)
            assert time.monotonic() - t0 < 4, "closing waited for a worker it had not killed"


class TestInline(ExecutorContract):
    __test__ = True

    def make(self, root: Path, **options: Any) -> Executor:
        return InlineExecutor(ExecutorOptions(data_root=root, **options))

    def test_it_does_not_claim_to_kill_workers(self, root: Path) -> None:
        assert not self.make(root).kills_workers  # it runs shards in this process


def test_unknown_scheme_lists_known(tmp_path: Path) -> None:
    from backtest.errors import UsageError
    from backtest.executors import from_url

    with pytest.raises(UsageError, match=r'unknown executor scheme "ftp://"; known: local://, inline://, ssh://'):
        from_url("ftp://x", ExecutorOptions(data_root=tmp_path))
    with pytest.raises(UsageError, match=r"whole number ≥ 1, e.g. local://4"):
        from_url("local://zero", ExecutorOptions(data_root=tmp_path))

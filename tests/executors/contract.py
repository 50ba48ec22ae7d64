"""The executor contract, one test class for every backend.

Subclass ``ExecutorContract`` and implement ``make`` (``__test__`` is switched back on there).
Executors whose workers are processes they can kill (local, ssh) subclass
``WorkerProcessContract``, which adds the timeout rule (``Executor.kills_workers``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from helpers import processes_with  # noqa: F401 - the executor tests import it from here

from backtest.executors.base import (
    Executor,
    ExecutorOptions,
    ShardFailed,
    ShardFinished,
    TaskDone,
    TaskFailed,
    WorkerNote,
    task_outcomes,
)
from backtest.run import RunRequest, prepare


def drive(ex: Executor, prep: Any, limit: float = 240.0) -> list[Any]:
    import time

    events: list[Any] = []
    deadline = time.monotonic() + limit
    with ex:
        ex.start(prep.job.strategy)
        ex.submit(prep.shards)
        while not ex.finished():
            events.extend(task_outcomes(ex.poll(0.2)))
            assert time.monotonic() < deadline, "executor did not finish in time"
    return events


class ExecutorContract:
    __test__ = False

    def make(self, root: Path, **options: Any) -> Executor:
        raise NotImplementedError

    def plan(self, root: Path, strategy: Path, params: list[str], **kw: Any) -> Any:
        return prepare(RunRequest(strategy=strategy, params=params, start="2020", end="2021", **kw), root)

    def test_every_task_reported_once_with_identical_bytes(self, root: Path, faulty: Path) -> None:
        from backtest.executors.inline import InlineExecutor

        prep = self.plan(root, faulty, ["n=3:12"])
        events = drive(self.make(root), prep)
        done = [e for e in events if isinstance(e, TaskDone)]
        assert Counter(e.key for e in done) == Counter(t.key for t in prep.tasks)
        finished = {e.shard for e in events if isinstance(e, ShardFinished)}
        assert finished == {s.id for s in prep.shards}
        reference = drive(InlineExecutor(ExecutorOptions(data_root=root)), prep)
        ref = {e.key: e.body for e in reference if isinstance(e, TaskDone)}
        assert {e.key: whole_result(root, e) for e in done} == ref

    def test_shards_submitted_later_run_too(self, root: Path, faulty: Path) -> None:
        """A walk-forward run submits its out-of-sample shards while (or after) the first ones
        run: ``submit`` may be called again, also once everything submitted has finished."""
        import time

        prep = self.plan(root, faulty, ["n=3:6"])
        first, later = prep.shards[: len(prep.shards) // 2], prep.shards[len(prep.shards) // 2:]
        events: list[Any] = []
        deadline = time.monotonic() + 240
        with self.make(root) as ex:
            ex.start(prep.job.strategy)
            ex.submit(first)
            while not ex.finished():
                events.extend(task_outcomes(ex.poll(0.2)))
                assert time.monotonic() < deadline
            ex.submit(later)
            assert not ex.finished()
            while not ex.finished():
                events.extend(task_outcomes(ex.poll(0.2)))
                assert time.monotonic() < deadline
        assert Counter(e.key for e in events if isinstance(e, TaskDone)) == Counter(t.key for t in prep.tasks)

    def test_a_raising_strategy_fails_only_its_task(self, root: Path, faulty: Path) -> None:
        prep = self.plan(root, faulty, ["n=5:9", "mode=raise"])
        events = drive(self.make(root), prep)
        failed = [e for e in events if isinstance(e, TaskFailed)]
        assert len(failed) == 3  # n=7 on each of the 3 symbols
        assert all("boom at n=7" in e.error for e in failed)
        assert all("faulty.py" in e.details and "raise ValueError" in e.details for e in failed)
        assert len([e for e in events if isinstance(e, TaskDone)]) == 12
        assert not [e for e in events if isinstance(e, ShardFailed)]


    def test_cancel_mid_run_returns_at_once_and_keeps_what_was_reported(self, root: Path, faulty: Path) -> None:
        import time

        prep = self.plan(root, faulty, ["n=3:10", "mode=slow"])
        ex = self.make(root)
        ex.start(prep.job.strategy)
        ex.submit(prep.shards)
        events: list[Any] = []
        deadline = time.monotonic() + 120
        while not any(isinstance(e, TaskDone) for e in events):
            events.extend(task_outcomes(ex.poll(0.1)))
            assert time.monotonic() < deadline, "no task was done in time"
        t0 = time.monotonic()
        ex.close(cancel=True)
        assert time.monotonic() - t0 < 5
        ex.close(cancel=True)  # idempotent
        done = [e.key for e in events if isinstance(e, TaskDone)]
        assert len(done) == len(set(done)) and set(done) <= {t.key for t in prep.tasks}


class WorkerProcessContract(ExecutorContract):
    """For executors whose workers are processes they kill (``kills_workers``): a shard that
    overruns ``timeout`` is killed and retried, then fails with every attempt's error; a worker
    killed from outside mid-shard is replaced, and every task is still reported exactly once."""

    def test_the_executor_says_it_kills_workers(self, root: Path) -> None:
        assert self.make(root).kills_workers

    def test_a_killed_worker_is_replaced_and_nothing_is_lost(self, root: Path, faulty: Path) -> None:
        import os
        import signal
        import time

        prep = self.plan(root, faulty, ["n=3:8", "mode=slow"])
        ex = self.make(root)
        events: list[Any] = []
        killed: list[int] = []
        deadline = time.monotonic() + 240
        with ex:
            ex.start(prep.job.strategy)
            ex.submit(prep.shards)
            while not ex.finished():
                assert time.monotonic() < deadline, "executor did not finish in time"
                events.extend(task_outcomes(ex.poll(0.1)))
                # a worker that is busy with a shard, by the pid it said in its hello (on an SSH
                # host of the test farm too: its namespaces share this machine's pids)
                busy = [w for w in ex.status() if w.state == "busy" and w.env.get("pid")]
                if not killed and busy and any(isinstance(e, TaskDone) for e in events):
                    killed.append(int(busy[0].env["pid"]))
                    os.kill(killed[0], signal.SIGKILL)
        assert killed
        done = Counter(e.key for e in events if isinstance(e, TaskDone))
        assert sorted(done) == sorted(t.key for t in prep.tasks) and set(done.values()) == {1}
        assert not [e for e in events if isinstance(e, TaskFailed | ShardFailed)]
        said = [e.message for e in events if isinstance(e, WorkerNote)]
        assert any("killed by SIGKILL" in m or "worker died" in m for m in said), said

    def test_timeout_kills_and_retries_then_fails_with_every_attempt(self, root: Path, faulty: Path) -> None:
        prep = self.plan(root, faulty, ["n=7", "mode=loop"], symbols=["AAA"])
        events = drive(self.make(root, timeout=2.0), prep)
        failed = [e for e in events if isinstance(e, ShardFailed)]
        assert len(failed) == 1 and len(failed[0].errors) == 3
        assert all("timed out after 2 s" in e for e in failed[0].errors)


def whole_result(root: Path, event: TaskDone) -> bytes:
    """The result file an event stands for: workers on the coordinator's machine store it
    themselves and send only its head, which must then be the head of that file."""
    if not event.stored:
        return event.body
    from backtest.store.results import ResultStore

    data = ResultStore(root).read_bytes(event.key)
    assert data.startswith(event.body) and len(event.body) < len(data)
    return data

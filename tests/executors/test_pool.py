"""The stream pool under the local and SSH executors: workers sent their next shard while they
compute, a killed worker charged only for the shard it was running, and ``results`` frames.

Real processes, except two tests that drive the pool with channels that only record what they
are sent: the dispatch policy (which shard goes where near the end of a run cannot be made to
happen on demand with real workers) and malformed or misplaced ``results`` frames (a real worker
never sends one); the same paths run for real in the first test here, in the executor contract
and in tests/run/test_run_e2e.py.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from backtest.executors.base import ExecutorOptions, ShardFinished, TaskDone, task_outcomes
from backtest.executors.local import LocalExecutor
from backtest.run import RunRequest, prepare


def _spec(shard_id: str, keys: list[str]) -> Any:
    """A shard spec of these task keys (nothing here reads bars)."""
    from backtest.spec import ShardGroup, ShardSpec

    return ShardSpec(shard_id, "S", "strategy", 0, 1, {}, (),
                     (ShardGroup(0, (), tuple((k, {}) for k in keys)),))

def plan(root: Path, strategy: Path, params: list[str], **kw: Any) -> Any:
    return prepare(RunRequest(strategy=strategy, params=params, start="2020", end="2021", **kw), root)


def test_a_killed_worker_charges_only_the_shard_it_was_running(root: Path, faulty: Path) -> None:
    """A worker holds its running shard and the next one; killed, the running one counts an
    attempt and the waiting one goes back to the queue as it was."""
    prep = plan(root, faulty, ["n=3:12", "mode=slow"], symbols=["AAA", "BBB"])
    assert len(prep.shards) >= 6
    ex = LocalExecutor(ExecutorOptions(data_root=root, workers=2))
    events: list[Any] = []
    running = waiting = None
    with ex:
        ex.start(prep.job.strategy)
        ex.submit(prep.shards)
        deadline = time.monotonic() + 120
        while not ex.finished():
            events.extend(task_outcomes(ex.poll(0.05)))
            assert time.monotonic() < deadline
            if running is None:
                for slot in ex._slots:
                    if len(slot.jobs) == 2 and slot.channel is not None:
                        running, waiting = slot.jobs
                        os.kill(slot.channel.pid, signal.SIGKILL)  # type: ignore[attr-defined]
                        break
    assert running is not None and waiting is not None
    assert running.attempts == 1 and "killed by SIGKILL" in running.errors[0]
    assert waiting.attempts == 0 and waiting.errors == []
    # outcomes say which attempt made them (recorded in run_tasks.attempts)
    by_key = {e.key: e.attempt for e in events if isinstance(e, TaskDone)}
    assert 2 in {by_key[k] for k in running.shard.keys}  # the killed shard's rest, on its second attempt
    assert {by_key[k] for k in waiting.shard.keys} == {1}
    assert Counter(e.key for e in events if isinstance(e, TaskDone)) == Counter(t.key for t in prep.tasks)
    assert {e.shard for e in events if isinstance(e, ShardFinished)} == {s.id for s in prep.shards}


class _Recorder:
    """A channel that only records the shards it is sent (see the module docstring)."""

    def __init__(self) -> None:
        self.shards: list[str] = []

    def send(self, data: bytes) -> None:
        pass

    def kill(self) -> None:
        pass


def test_next_shards_go_out_early_only_while_there_is_more_work_than_workers() -> None:
    from backtest.executors.pool import PREFETCH, StreamPool
    from backtest.spec import Shard

    class Pool(StreamPool):
        def slot_names(self) -> list[tuple[str, str]]:
            return [("w0", "h"), ("w1", "h")]

        def spawn(self, label: str, host: str) -> Any:
            return _Recorder()

        def send_shard(self, slot: Any, spec: Any) -> None:
            slot.channel.shards.append(spec.id)

    assert PREFETCH == 2
    pool = Pool(ExecutorOptions(data_root=Path(".")))
    from backtest.executors.pool import _Slot

    pool._slots = [_Slot("w0", "h"), _Slot("w1", "h")]
    for gen, s in enumerate(pool._slots, 1):
        s.channel = _Recorder()  # type: ignore[assignment]
        s.state = "idle"
        s.gen = gen
    shards = [Shard(f"s{i}", _spec(f"s{i}", [f"k{i}"]), [f"k{i}"]) for i in range(5)]
    pool.submit(shards)
    sent = {s.label: list(s.channel.shards) for s in pool._slots}  # type: ignore[union-attr]
    # one each, then a second each while ≥ 2 shards were left: s0 s2 / s1 s3; s4 waits
    assert sent == {"w0": ["s0", "s2"], "w1": ["s1", "s3"]}
    assert [p.shard.id for p in pool._pending] == ["s4"]

    def finish(shard: str) -> None:
        k = "k" + shard[1:]
        pool._handle(1, {"t": "result", "shard": shard, "key": k, "stored": True}, b"")
        pool._handle(1, {"t": "shard_done", "shard": shard, "seconds": 0.1}, b"")

    finish("s0")
    # w0 runs s2 now; one shard left for two workers: nobody gets a second one
    assert [j.shard.id for j in pool._slots[0].jobs] == ["s2"]
    assert [p.shard.id for p in pool._pending] == ["s4"]
    finish("s2")
    assert [j.shard.id for j in pool._slots[0].jobs] == ["s4"] and not pool._pending
    assert [e.shard for e in pool.poll(0) if type(e).__name__ == "ShardFinished"] == ["s0", "s2"]


K0, K1 = "0a" * 32, "1b" * 32  # task keys: 64 hex digits


def test_results_frames_are_taken_only_from_workers_that_store_results_themselves() -> None:
    """A ``results`` frame (its keys joined in one string) is taken whole from a worker that
    stores results itself, and refused whole otherwise or when its parts do not fit."""
    from array import array

    from backtest.executors.base import WorkerNote
    from backtest.executors.pool import StreamPool, _Slot
    from backtest.spec import Shard

    def pool_with(stores: bool) -> Any:
        class Pool(StreamPool):
            stores_results = stores

            def slot_names(self) -> list[tuple[str, str]]:
                return [("w0", "h")]

            def spawn(self, label: str, host: str) -> Any:
                return _Recorder()

            def send_shard(self, slot: Any, spec: Any) -> None:
                pass

        pool = Pool(ExecutorOptions(data_root=Path(".")))
        slot = _Slot("w0", "h")
        slot.channel, slot.state, slot.gen = _Recorder(), "idle", 1  # type: ignore[assignment]
        slot.env = {"env": {"bt": "x"}}
        pool._slots = [slot]
        pool.submit([Shard("s0", _spec("s0", [K0, K1]), [K0, K1])])
        return pool

    def frame(keys: list[str], values: list[float]) -> tuple[dict[str, Any], bytes]:
        return ({"t": "results", "shard": "s0", "keys": "".join(keys), "n_trades": [3] * len(keys), "metrics": ["a", "b"]},
                array("d", values).tobytes())

    good = pool_with(True)
    good._handle(1, *frame([K0, K1], [1.0, 2.0, 3.0, float("inf")]))
    done = [e for e in task_outcomes(good.poll(0)) if isinstance(e, TaskDone)]
    assert [(e.key, e.metrics, e.n_trades, e.env, e.stored) for e in done] == [
        (K0, {"a": 1.0, "b": 2.0}, 3, {"bt": "x"}, True), (K1, {"a": 3.0, "b": float("inf")}, 3, {"bt": "x"}, True)]
    assert not good._slots[0].jobs[0].remaining

    torn = frame([K0, K1], [1.0, 2.0, 3.0, 4.0])
    for pool, (header, body) in ((pool_with(False), frame([K0, K1], [1.0, 2.0, 3.0, 4.0])),  # remote hosts
                                 (pool_with(True), frame([K0, K1], [1.0, 2.0, 3.0])),  # one value short
                                 (pool_with(True), (torn[0], torn[1][:-3])),  # not whole float64s
                                 (pool_with(True), ({**torn[0], "keys": K0 + K1[:-1]}, torn[1]))):  # a key cut
        pool._handle(1, header, body)
        events = list(pool._events)  # not poll(): that would start a replacement worker
        assert not [e for e in events if isinstance(e, TaskDone)]
        assert [e.message for e in events if isinstance(e, WorkerNote)] == [
            "worker sent a results frame it should not have"]
        assert [list(p.remaining) for p in pool._pending] == [[K0, K1]]  # back in the queue, nothing lost


def test_rows_that_come_fast_are_recorded_a_row_group_at_a_time() -> None:
    """Many small catalog writes cost several times what a few large ones do (a checkpoint
    compresses a partly filled row group again): rows that come fast wait for ``FLUSH_ROWS`` of them, or
    ``MAX_LAG_SECONDS``; rows that trickle in are recorded every ``FLUSH_SECONDS``."""
    from backtest.run.record import BUSY_ROWS, FLUSH_ROWS, FLUSH_SECONDS, MAX_LAG_SECONDS, flush_due

    assert BUSY_ROWS < FLUSH_ROWS
    assert not flush_due(10, FLUSH_SECONDS / 2)
    assert flush_due(10, FLUSH_SECONDS + 0.1)  # a trickle: as before
    assert not flush_due(BUSY_ROWS, FLUSH_SECONDS + 0.1)  # fast: wait for more
    assert flush_due(FLUSH_ROWS, 0.5)
    assert flush_due(BUSY_ROWS, MAX_LAG_SECONDS + 0.1)  # but never longer than this


def _pair(first: int, n: int, now: float = 1.0) -> tuple[object, object]:
    """A worker's batch of ``n`` stored results as the recorder keeps it: task rows and result rows,
    ``Columns`` blocks sharing their key column."""
    import numpy as np

    from backtest.catalog import METRICS, OPTIONAL_METRICS
    from backtest.catalog.staging import Columns
    from backtest.run.record import _done_block

    keys = np.array([f"{i:064x}" for i in range(first, first + n)], dtype=object)
    symbols = np.full(n, "DEMO", dtype=object)
    params = np.array([json.dumps({"fast": i}) for i in range(first, first + n)], dtype=object)
    tasks = _done_block(keys, symbols, params, False, 1, "w", now)
    results = Columns(n, {"key": keys, "symbol": symbols, "params": params, "n_trades": np.arange(n),
                          "env": np.full(n, "{}", dtype=object), "recorded": np.full(n, now),
                          **{m: np.arange(first, first + n, dtype=np.float64) for m in METRICS},
                          **{m: np.full(n, np.nan) for m in OPTIONAL_METRICS}})
    return tasks, results


def test_rows_that_come_fast_are_written_whole_row_groups_at_a_time(tmp_path: Path) -> None:
    """A write of rows that come fast ends at a row group's end (a partly filled row group is
    compressed again at every checkpoint): batches are cut there, a batch's task rows and result
    rows together, and the rest waits; rows in any other shape are written whole. Written to a
    real catalog, every row is there once, in order."""
    from backtest.catalog import Catalog
    from backtest.run.record import _cut

    pairs = [_pair(0, 500), _pair(500, 700), _pair(1200, 300), _pair(1500, 40)]
    tasks, results = [t for t, _ in pairs], [r for _, r in pairs]
    now_t, now_r, (kept_t, kept_r) = _cut(list(tasks), list(results), 1024)
    assert [b.n for b in now_t] == [b.n for b in now_r] == [500, 524]  # a row group (of 1 024 here)
    assert [b.n for b in kept_t] == [b.n for b in kept_r] == [176, 300, 40]
    for t, r in zip([*now_t, *kept_t], [*now_r, *kept_r], strict=True):
        assert t["key"] is r["key"]  # still pairs: the next write can cut them again
    keys = [k for b in [*now_t, *kept_t] for k in b["key"]]
    assert keys == [f"{i:064x}" for i in range(1540)]
    assert list(now_r[1]["sharpe"][-3:]) == [1021.0, 1022.0, 1023.0] and kept_r[0]["sharpe"][0] == 1024.0

    assert _cut(list(tasks), list(results), 4096)[2] == ([], [])  # less than a group: all now
    assert [b.n for b in _cut(list(tasks), list(results), 512)[2][0]] == [4]  # three groups now
    dict_row = {"key": "f" * 64, "symbol": "DEMO", "params": "{}", "status": "failed", "cached": False,
                "attempts": 1, "error": "x", "details": "", "worker": "w", "at_time": 1.0}
    whole = _cut([*tasks, dict_row], list(results), 512)  # a failed task's row: not pairs
    assert whole[2] == ([], []) and len(whole[0]) == 5

    cat = Catalog(tmp_path / "catalog.duckdb")
    cat.create_run({"run_id": "r", "created": 1.0, "strategy": "S", "status": "running"})
    cat.record("r", now_t, now_r)
    cat.record("r", kept_t, kept_r)
    with cat.connect(read_only=True) as con:
        assert con.execute("SELECT count(*), count(DISTINCT key) FROM run_tasks").fetchone() == (1540, 1540)
        assert con.execute("SELECT count(*) FROM results r JOIN run_tasks t USING (key) "
                           "WHERE r.sharpe = r.params::JSON->>'fast'").fetchone() == (1540,)

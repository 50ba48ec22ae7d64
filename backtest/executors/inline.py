"""``inline://``: run every shard in this process, one after another (for debugging)."""

from __future__ import annotations

from typing import Any, ClassVar

from backtest.executors.base import (
    Event,
    Executor,
    Shard,
    ShardFailed,
    ShardFinished,
    ShardLog,
    StrategySource,
    TaskDone,
    TaskFailed,
    WorkerStatus,
)


class InlineExecutor(Executor):
    scheme: ClassVar[str] = "inline"

    def start(self, strategy: StrategySource) -> None:
        from backtest.worker import Runner

        self.strategy = strategy
        self._runner = Runner(self.options.data_root)
        self._runner.add_strategy(
            {"hash": strategy.hash, "source": strategy.source, "filename": strategy.filename, "name": strategy.name}
        )
        self._queue: list[Shard] = []
        self._done = 0

    def submit(self, shards: list[Shard]) -> None:
        self._queue.extend(shards)

    def finished(self) -> bool:
        return not self._queue

    def poll(self, timeout: float) -> list[Event]:
        if not self._queue:
            return []
        shard = self._queue.pop(0)
        events: list[Event] = []
        left = set(shard.keys)

        def emit(msg: dict[str, Any], body: bytes = b"") -> None:
            kind = msg["t"]
            if kind == "result":
                left.discard(msg["key"])
                events.append(TaskDone(shard.id, msg["key"], body, "inline"))
            elif kind == "task_error":
                left.discard(msg["key"])
                events.append(TaskFailed(shard.id, msg["key"], msg["error"], msg.get("details", ""), "inline"))
            elif kind == "log":
                events.append(ShardLog(shard.id, msg["text"], "inline"))
            elif kind == "shard_error":
                events.append(ShardFailed(shard.id, sorted(left), [msg["error"]]))
            elif kind == "shard_done":
                events.append(ShardFinished(shard.id))

        self._runner.run_shard(shard.spec, emit)
        self._done += 1
        return events

    def status(self) -> list[WorkerStatus]:
        return [WorkerStatus("inline", "localhost", "busy" if self._queue else "idle", self._done)]

    def close(self, *, cancel: bool = False) -> None:
        self._queue = []

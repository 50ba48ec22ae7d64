"""``inline://``: run every shard in this process, one after another (for debugging)."""

from __future__ import annotations

from typing import Any, ClassVar

from backtest.executors.base import Event, Executor, WorkerStatus, frames_to_events
from backtest.spec import Shard, StrategySource


class InlineExecutor(Executor):
    scheme: ClassVar[str] = "inline"

    def start(self, strategy: StrategySource) -> None:
        from backtest.worker.shard import Runner

        self.strategy = strategy
        self._runner = Runner(self.options.data_root)
        self._runner.add_strategy(strategy.message())
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
        frames: list[tuple[dict[str, Any], bytes]] = []
        self._runner.run_shard(shard.spec, lambda h, b=b"": frames.append((h, b)))
        self._done += 1
        return frames_to_events(shard, frames, "inline")

    def status(self) -> list[WorkerStatus]:
        return [WorkerStatus("inline", "localhost", "busy" if self._queue else "idle", self._done)]

    def close(self, *, cancel: bool = False) -> None:
        self._queue = []

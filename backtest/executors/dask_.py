"""``dask://HOST:PORT``: run shards as tasks on a Dask cluster (``pip install 'bt-farm[dask]'``).

``dask://local`` (or ``dask://``) starts a local cluster with one single-threaded worker process
per core. Each shard is one Dask task running the same ``Runner.run_shard`` the worker program
runs; Dask reschedules the tasks of a worker it loses, and retries a failed task up to
``max_attempts`` times in all. The Dask workers must see the data root at the same path (a
shared filesystem): unlike the SSH executor, this one does not ship partitions. A per-shard
``--timeout`` is not enforced here (Dask has no way to kill a running task).
"""

from __future__ import annotations

from typing import Any, ClassVar

from backtest.errors import ExecutorError
from backtest.executors.base import (
    Event,
    Executor,
    ExecutorOptions,
    ShardFailed,
    WorkerStatus,
    frames_to_events,
)
from backtest.spec import Shard, ShardSpec, StrategySource

_RUNNERS: dict[tuple[str, str], Any] = {}  # per Dask worker process: numba compiles once per strategy


def run_shard_task(spec: ShardSpec, strategy: dict[str, str], data_root: str) -> list[tuple[dict[str, Any], bytes]]:
    """The function Dask runs (the spec travels pickled): one shard, every outcome as (header, body)
    frames."""
    from pathlib import Path

    from backtest.worker.shard import Runner

    key = (strategy["hash"], data_root)
    runner = _RUNNERS.get(key)
    if runner is None:
        runner = Runner(Path(data_root))
        runner.add_strategy(strategy)
        _RUNNERS[key] = runner
    out: list[tuple[dict[str, Any], bytes]] = []
    runner.run_shard(spec, lambda h, b=b"": out.append((h, b)))
    return out


class DaskExecutor(Executor):
    scheme: ClassVar[str] = "dask"

    def __init__(self, address: str, options: ExecutorOptions) -> None:
        super().__init__(options)
        try:
            import distributed  # noqa: F401
        except ImportError as exc:
            raise ExecutorError("the Dask executor needs dask: pip install 'bt-farm[dask]'") from exc
        self.address = address
        self._client: Any = None
        self._cluster: Any = None
        self._futures: dict[Any, Shard] = {}
        self._done = 0

    @classmethod
    def from_url(cls, rest: str, options: ExecutorOptions) -> DaskExecutor:
        return cls(rest, options)

    def describe(self) -> str:
        return f"dask://{self.address or 'local'}"

    def start(self, strategy: StrategySource) -> None:
        from distributed import Client, LocalCluster

        self.strategy = strategy
        try:
            if self.address in ("", "local"):
                from backtest.executors import cores

                # its HTTP server on a free port: the default, 8787, warns when taken (another cluster)
                self._cluster = LocalCluster(n_workers=self.options.workers or cores(), threads_per_worker=1,
                                             processes=True, dashboard_address=":0")
                self._client = Client(self._cluster)
            else:
                self._client = Client(self.address, timeout=10)
        except OSError as exc:
            raise ExecutorError(f"cannot reach the Dask scheduler at {self.address}: {exc}") from exc

    def submit(self, shards: list[Shard]) -> None:
        assert self.strategy is not None
        msg = self.strategy.message()
        for shard in shards:
            fut = self._client.submit(run_shard_task, shard.spec, msg, str(self.options.data_root), pure=False,
                                      retries=self.options.max_attempts - 1, key=f"bt-shard-{shard.id}")
            self._futures[fut] = shard

    def finished(self) -> bool:
        return not self._futures

    def poll(self, timeout: float) -> list[Event]:
        import time

        if not self._futures:
            return []
        deadline = time.monotonic() + timeout
        while True:
            done = [f for f in self._futures if f.done()]
            if done or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        events: list[Event] = []
        for fut in done:
            shard = self._futures.pop(fut)
            self._done += 1
            if fut.status == "error":
                err = fut.exception()
                events.append(ShardFailed(shard.id, list(shard.keys), [f"{type(err).__name__}: {err}"]))
                continue
            events.extend(frames_to_events(shard, fut.result(), "dask"))
        return events

    def status(self) -> list[WorkerStatus]:
        if self._client is None:
            return []
        try:
            workers = self._client.scheduler_info(n_workers=-1)["workers"]
        except Exception:
            return []
        busy = len(self._futures) > 0
        return [WorkerStatus(w.get("name", addr), w.get("host", "dask"), "busy" if busy else "idle")
                for addr, w in workers.items()]

    def close(self, *, cancel: bool = False) -> None:
        if self._client is not None:
            if self._futures:
                self._client.cancel(list(self._futures))
                self._futures.clear()
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

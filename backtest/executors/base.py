"""The executor contract.

An executor moves shards to workers and outcomes back. It knows nothing of the catalog or the
terminal: the runner records what it reports and renders progress. Every executor passes the
same contract tests (``tests/executors/contract.py``).

Results come back one of two ways, and the runner handles both: a ``TaskDone`` carries a
result file's bytes (the runner stores them, a pack per batch, ``store.packs``), or, for workers
on the coordinator's own machine that share its results store, the worker has written a pack of
results itself and a ``TasksDone`` carries, as columns, only the metrics the catalog needs.
Local workers store their own results (only a few hundred bytes a task cross the pipe instead of
every trade); SSH and Dask workers, whose disks are not the coordinator's, send the bytes.

The life of a run, from the runner's side::

    ex = from_url("local://4", options)   # backtest.executors: the registry
    ex.start(strategy)            # start workers; may return before they are up
    ex.submit(shards)
    while not ex.finished():
        for event in ex.poll(0.2): ...
    ex.close()                    # or ex.close(cancel=True) on Ctrl+C

Rules an implementer must keep:

- ``submit`` may be called again at any time, also after everything submitted before has finished
  (a walk-forward run submits its out-of-sample shards as its folds are decided); ``finished()``
  is then false again until those end too.
- Every submitted shard ends in exactly one ``ShardFinished`` or ``ShardFailed``.
- Each task key is reported done (``TaskDone`` or in a ``TasksDone``) at most once, even when a worker that was given
  up for lost answers later: drop whatever a lost worker sends.
- A shard whose worker dies, overruns ``timeout`` or stops sending heartbeats is retried
  elsewhere with only its unreported tasks, up to ``max_attempts`` times; then ``ShardFailed``
  carries every attempt's error.
- A task whose strategy raised is reported by ``TaskFailed`` and not retried (it is
  deterministic); the rest of its shard goes on.
- ``close(cancel=True)`` kills every worker it started, locally or remotely: no orphans.
- When no worker can run anything any more (every host set aside, every worker failing to
  start), ``exhausted`` says why and ``finished()`` is true: the runner ends the run as
  interrupted, keeping what is done, and the same command resumes it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from backtest.spec import Shard, StrategySource


@dataclass(frozen=True)
class ExecutorOptions:
    data_root: Path
    workers: int | None = None  # None: one per core
    timeout: float | None = None  # wall seconds per shard attempt
    max_memory: int | None = None  # bytes per worker (address space); None: the sandbox's default, 0: none
    sandbox: bool = True  # workers run strategies sandboxed (``backtest.worker.sandbox``)
    max_attempts: int = 3
    heartbeat_timeout: float = 10.0
    accept_new_hosts: bool = False


# Events ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskDone:
    shard: str
    key: str
    body: bytes  # the result file, or b"" when ``stored``
    worker: str
    stored: bool = False  # the worker already wrote the file into the results store
    # when ``stored``: what the catalog needs of the file (its metrics, trade count and env)
    metrics: dict[str, float] | None = None
    n_trades: int = 0
    env: dict[str, Any] | None = None
    attempt: int = 1  # which attempt at its shard made it (1 unless the shard was retried)


@dataclass(frozen=True)
class TasksDone:
    """Tasks whose result files a worker stored itself (``stores_results``), reported together:
    what the catalog needs of them as columns (a few thousand tasks a second make one event each
    instead of one per task)."""

    shard: str
    keys: list[str]
    names: tuple[str, ...]  # metric names
    values: Any  # ``array("d")``: the metrics of each task in ``keys``, task after task
    n_trades: list[int]
    worker: str
    env: dict[str, Any] | None = None
    attempt: int = 1

    def each(self) -> list[TaskDone]:
        """The same outcomes one task at a time."""
        w = len(self.names)
        return [TaskDone(self.shard, k, b"", self.worker, True,
                         dict(zip(self.names, self.values[i * w:(i + 1) * w], strict=True)), self.n_trades[i],
                         self.env, self.attempt) for i, k in enumerate(self.keys)]


def task_outcomes(events: list[Event]) -> list[Event]:
    """``events`` with every ``TasksDone`` as the ``TaskDone`` of each of its tasks."""
    out: list[Event] = []
    for e in events:
        if isinstance(e, TasksDone):
            out.extend(e.each())
        else:
            out.append(e)
    return out


@dataclass(frozen=True)
class TaskFailed:
    shard: str
    key: str
    error: str
    details: str
    worker: str
    attempt: int = 1


@dataclass(frozen=True)
class ShardLog:
    shard: str
    text: str
    worker: str


@dataclass(frozen=True)
class ShardFinished:
    shard: str


@dataclass(frozen=True)
class ShardFailed:
    shard: str
    keys: list[str]  # the tasks that never got a result
    errors: list[str]  # one per attempt


@dataclass(frozen=True)
class WorkerNote:
    """Something the display or the logs should know: a worker lost, a host set aside."""

    worker: str
    message: str


@dataclass(frozen=True)
class ResultDiffers:
    """A worker recomputed ``key`` and got other bits than the intact result stored under it
    (``what``: how they differ); the new result replaced the stored one."""

    shard: str
    key: str
    what: str
    worker: str


Event = TaskDone | TasksDone | TaskFailed | ShardLog | ShardFinished | ShardFailed | WorkerNote | ResultDiffers


@dataclass
class WorkerStatus:
    label: str
    host: str
    state: str  # starting | idle | busy | lost | dead | set-aside
    shards_done: int = 0
    failures: int = 0
    env: dict[str, Any] = field(default_factory=dict)


def frames_to_events(shard: Shard, frames: list[tuple[dict[str, Any], bytes]], worker: str) -> list[Event]:
    """What an in-process run of ``shard`` (the worker's frames, in order) means as events: for
    executors that run ``Runner.run_shard`` directly instead of talking to a worker program."""
    events: list[Event] = []
    left = set(shard.keys)
    for header, body in frames:
        kind = header["t"]
        if kind == "result":
            left.discard(header["key"])
            events.append(TaskDone(shard.id, header["key"], body, worker))
        elif kind == "task_error":
            left.discard(header["key"])
            events.append(TaskFailed(shard.id, header["key"], header["error"], header.get("details", ""), worker))
        elif kind == "log":
            events.append(ShardLog(shard.id, header["text"], worker))
        elif kind == "shard_error":
            events.append(ShardFailed(shard.id, sorted(left), [header["error"]]))
            return events
    events.append(ShardFinished(shard.id) if not left else
                  ShardFailed(shard.id, sorted(left), [f"the shard ended without {len(left)} results"]))
    return events


class Executor(ABC):
    scheme: ClassVar[str]
    #: Whether workers are processes this executor kills: then ``timeout`` and ``max_memory`` are
    #: enforced (a shard over its time is killed and retried) and a dead worker's shard is retried
    #: elsewhere. The inline executor runs shards in this process and Dask cannot kill a running
    #: task: neither enforces them.
    kills_workers: ClassVar[bool] = False

    def __init__(self, options: ExecutorOptions) -> None:
        self.options = options
        self.strategy: StrategySource | None = None  # set by start()
        #: why no worker can run anything any more (see the rules above), else None
        self.exhausted: str | None = None

    @classmethod
    def from_url(cls, rest: str, options: ExecutorOptions) -> Executor:
        """The executor for a URL's part after ``scheme://`` (checked by ``executors.parse_url``)."""
        return cls(options)

    @abstractmethod
    def start(self, strategy: StrategySource) -> None:
        """Start the workers; every worker must load ``strategy`` before it runs a shard."""

    @abstractmethod
    def submit(self, shards: list[Shard]) -> None:
        """Queue shards; they are handed to workers as workers free up (pull-based)."""

    @abstractmethod
    def poll(self, timeout: float) -> list[Event]:
        """Wait up to ``timeout`` seconds; return what happened since the last call."""

    @abstractmethod
    def finished(self) -> bool:
        """True when every submitted shard has ended (finished or failed)."""

    @abstractmethod
    def status(self) -> list[WorkerStatus]:
        """One entry per worker, for the live display."""

    @abstractmethod
    def close(self, *, cancel: bool = False) -> None:
        """Stop every worker; ``cancel`` kills in-flight work at once. Idempotent."""

    def describe(self) -> str:
        return self.scheme + "://"

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(cancel=exc[0] is not None)

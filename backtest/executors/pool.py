"""A pool of worker processes reached through byte streams: what local and SSH executors share.

Subclasses say how many worker slots there are and how to start one (``spawn``); the pool does
the rest of the executor contract: pull-based dispatch, heartbeats, per-shard timeouts, retries
of only the unreported tasks, backoff and setting aside of slots that keep failing, and dropping
whatever a worker that was given up for lost sends later.

While there is plenty of work left, a worker is sent its next shard before it finishes the one
it is running (``PREFETCH`` shards in hand at most): it starts the next one the moment the last
ends, with no round trip to the coordinator in between — and an SSH host receives the next
shard's data while it computes. Near the end of a run each worker holds one shard, so that no
shard waits behind another while a worker is idle.
"""

from __future__ import annotations

import queue
import threading
import time
from abc import abstractmethod
from array import array
from collections import deque
from collections.abc import Container
from dataclasses import dataclass, field
from typing import IO, Any, ClassVar

from backtest.errors import BtError
from backtest.executors.base import (
    Event,
    Executor,
    ResultDiffers,
    ShardFailed,
    ShardFinished,
    ShardLog,
    TaskDone,
    TaskFailed,
    TasksDone,
    WorkerNote,
    WorkerStatus,
)
from backtest.spec import Shard, ShardSpec, StrategySource
from backtest.trace import mark
from backtest.worker.protocol import ProtocolError, encode, encode_json, read_frame

STARTUP_TIMEOUT = 120.0
PREFETCH = 2
PING_SECONDS = 2.0
MAX_SPAWN_FAILURES = 4


class Channel:
    """One running worker process and its stdin/stdout."""

    stdin: IO[bytes]
    stdout: IO[bytes]

    @abstractmethod
    def kill(self) -> None:
        """Kill the worker process (and anything it started); must not raise."""

    @abstractmethod
    def describe_exit(self) -> str:
        """Why the worker ended, e.g. 'killed by SIGKILL' plus the tail of its stderr."""

    def send(self, data: bytes) -> None:
        self.stdin.write(data)
        self.stdin.flush()


@dataclass
class _Pending:
    shard: Shard
    #: the keys without an outcome yet, each the shard's own key object, in the shard's order
    #: (a dict: a batch of outcomes takes its keys out one by one, of up to 50 000 a shard)
    remaining: dict[str, str]
    attempts: int = 0
    errors: list[str] = field(default_factory=list)

    def spec(self) -> ShardSpec:
        """What a worker is sent: the shard's spec narrowed to the tasks that still have no
        outcome (the spec itself while none has one)."""
        if len(self.remaining) == len(self.shard.keys):
            return self.shard.spec
        return self.shard.spec.narrowed(self.remaining)


@dataclass
class _Slot:
    label: str
    host: str
    channel: Channel | None = None
    gen: int = 0
    state: str = "starting"
    jobs: list[_Pending] = field(default_factory=list)  # in the worker's order; the first is running
    started: float = 0.0
    last_seen: float = 0.0
    shards_done: int = 0
    failures: int = 0
    spawn_failures: int = 0
    next_spawn: float = 0.0
    env: dict[str, Any] = field(default_factory=dict)

    @property
    def job(self) -> _Pending | None:
        """The shard the worker is running (the others in ``jobs`` wait behind it)."""
        return self.jobs[0] if self.jobs else None

    def find(self, shard_id: Any) -> _Pending | None:
        for job in self.jobs:
            if job.shard.id == shard_id:
                return job
        return None


class StreamPool(Executor):
    kills_workers: ClassVar[bool] = True  # every worker is a process on a stream this pool can kill

    #: Whether this pool's workers write result files into the coordinator's store themselves (and
    #: so may report them by their metrics alone, in ``results`` frames). Never for remote hosts.
    stores_results: ClassVar[bool] = False

    def __init__(self, options: Any) -> None:
        super().__init__(options)
        self._q: queue.Queue[tuple[int, dict[str, Any] | None, Any]] = queue.Queue()
        self._slots: list[_Slot] = []
        self._pending: deque[_Pending] = deque()
        self._open: dict[str, _Pending] = {}
        self._done_keys: set[str] = set()
        self._param_texts: dict[int, tuple[Any, str]] = {}  # ``ShardSpec.wire_json``'s
        self._events: list[Event] = []
        self._gen = 0
        self._closed = False
        self._last_ping = 0.0
        self.exhausted: str | None = None

    # what a transport provides ---------------------------------------------------------------
    @abstractmethod
    def slot_names(self) -> list[tuple[str, str]]:
        """(label, host) per worker slot."""

    @abstractmethod
    def spawn(self, label: str, host: str) -> Channel:
        """Start one worker process; raise ExecutorError if it cannot be started."""

    def send_shard(self, slot: _Slot, spec: ShardSpec) -> None:
        """Hand a shard to the slot's worker. A transport may override this, e.g. to ship the
        shard's data first; it must not block this loop for long (do slow work in a thread)."""
        assert slot.channel is not None
        slot.channel.send(encode_json(spec.wire_json(self._param_texts)))

    def on_slot_failure(self, slot: _Slot, reason: str) -> None:
        """Hook for transports that track host health (SSH backoff); the default does nothing."""

    def may_spawn(self, slot: _Slot) -> bool:
        """Whether the slot's worker may start now; a transport that says no keeps the slot without
        a channel (e.g. while its host connects) and starts it later with ``spawn_slot``."""
        return True

    def maintain(self) -> None:
        """Called at the start of every maintenance pass of the loop (host health, say)."""

    # what the pool offers a transport (the SSH executor manages slots and hosts with these) -----
    @property
    def closed(self) -> bool:
        """``close`` has been called: start nothing more."""
        return self._closed

    @property
    def slots(self) -> list[_Slot]:
        """The worker slots (read them; change them with ``add_slot``/``remove_slot``)."""
        return list(self._slots)

    def has_work(self) -> bool:
        """Some submitted shard has not ended yet."""
        return bool(self._open)

    def in_flight(self) -> list[Shard]:
        """The shards submitted and not ended yet (running, waiting in a worker, or queued)."""
        return [p.shard for p in self._open.values()]

    def reset_slots(self) -> None:
        self._slots = []

    def add_slot(self, slot: _Slot) -> None:
        """A worker slot the pool dispatches to once it has a channel."""
        self._slots.append(slot)

    def remove_slot(self, slot: _Slot) -> None:
        """Forget a slot without a channel (a host with fewer cores than it had)."""
        self._slots.remove(slot)

    def spawn_slot(self, slot: _Slot) -> None:
        """Start the slot's worker now (``spawn``), as the pool would."""
        self._spawn(slot)

    def release(self, slot: _Slot, reason: str) -> None:
        """The slot's worker is gone with its host: stop it, put its shards back in the queue (an
        attempt each for the running one, as when a worker dies); the slot stays, channel-less."""
        if slot.channel is not None:
            self._retire(slot)
        self._take_jobs(slot, reason)

    def deliver(self, gen: int, frame: dict[str, Any] | None, body: Any = b"") -> None:
        """A frame for the slot of generation ``gen`` (from a transport's own thread); generation
        0 is no slot's: it only wakes the loop, which then maintains the pool."""
        self._q.put((gen, frame, body))

    def emit(self, event: Event) -> None:
        """An event for the next ``poll`` (a host's note, say)."""
        self._events.append(event)

    def dispatch(self) -> None:
        """Hand queued shards to idle workers now."""
        self._dispatch()

    # the contract ------------------------------------------------------------------------------
    def start(self, strategy: StrategySource) -> None:
        self.strategy = strategy
        self._slots = [_Slot(label, host) for label, host in self.slot_names()]
        for slot in self._slots:
            self._spawn(slot)

    def submit(self, shards: list[Shard]) -> None:
        for i, shard in enumerate(shards):
            p = _Pending(shard, {k: k for k in shard.keys})
            self._open[shard.id] = p
            self._pending.append(p)
            if i + 1 == len(self._slots):  # every worker its first shard before the others are queued
                self._dispatch()
        self._dispatch()

    def finished(self) -> bool:
        return not self._open or self.exhausted is not None

    def status(self) -> list[WorkerStatus]:
        return [
            WorkerStatus(s.label, s.host, s.state, s.shards_done, s.failures, s.env) for s in self._slots
        ]

    def poll(self, timeout: float) -> list[Event]:
        self._maintain()
        deadline = time.monotonic() + timeout
        while not self._events:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                item = self._q.get(timeout=min(left, 0.25))
            except queue.Empty:
                self._maintain()
                continue
            self._handle(*item)
            while True:
                try:
                    self._handle(*self._q.get_nowait())
                except queue.Empty:
                    break
            self._maintain()
        events, self._events = self._events, []
        return events

    def close(self, *, cancel: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        for slot in self._slots:
            ch = slot.channel
            if ch is None:
                continue
            if not cancel and slot.state in ("idle", "starting"):
                try:
                    ch.send(encode({"t": "stop"}))
                except (OSError, ValueError):
                    pass
            self._retire(slot)

    # internals ----------------------------------------------------------------------------------
    def _spawn(self, slot: _Slot) -> None:
        if not self.may_spawn(slot):
            return
        self._gen += 1
        slot.gen = self._gen
        slot.state = "starting"
        slot.started = slot.last_seen = time.monotonic()
        try:
            ch = self.spawn(slot.label, slot.host)
        except Exception as exc:  # a transport error: count it like a death before hello
            slot.channel = None
            self._slot_failed(slot, f"could not start a worker: {exc}")
            return
        slot.channel = ch
        gen = slot.gen
        threading.Thread(target=self._reader, args=(gen, ch), daemon=True, name=f"bt-read-{slot.label}").start()

    def _reader(self, gen: int, ch: Channel) -> None:
        try:
            while True:
                frame = read_frame(ch.stdout)
                if frame is None:
                    self._q.put((gen, None, "its output ended"))
                    return
                self._q.put((gen, frame[0], frame[1]))
        except (ProtocolError, OSError, ValueError) as exc:
            self._q.put((gen, None, f"its output broke ({exc})"))

    def _slot_of(self, gen: int) -> _Slot | None:
        for s in self._slots:
            if s.gen == gen and s.channel is not None:
                return s
        return None

    def _handle(self, gen: int, msg: dict[str, Any] | None, body: Any) -> None:
        slot = self._slot_of(gen)
        if slot is None:
            return  # a worker given up for lost: whatever it says now is dropped
        slot.last_seen = time.monotonic()
        if msg is None:
            assert slot.channel is not None
            reason = f"worker died: {slot.channel.describe_exit()}"
            self._lose(slot, reason)
            return
        kind = msg["t"]
        job = slot.find(msg["shard"]) if "shard" in msg else None
        if kind == "hb":
            return
        if kind == "hello":
            mark(f"worker {slot.label} ready")
            slot.env = {k: v for k, v in msg.items() if k != "t"}
            assert self.strategy is not None and slot.channel is not None
            s = self.strategy
            try:
                slot.channel.send(encode({"t": "strategy", **s.message()}))
            except (OSError, ValueError):
                self._lose(slot, "worker closed its input")
                return
            slot.state = "idle"
            slot.spawn_failures = 0
            self._dispatch()
        elif kind == "fatal":
            self._events.append(WorkerNote(slot.label, f"worker cannot load the strategy: {msg['error']}"))
            self._set_aside(slot, msg["error"])
        elif job is None:
            return
        elif kind == "result":
            key = msg["key"]
            if key in job.remaining:
                del job.remaining[key]
                if key not in self._done_keys:
                    self._done_keys.add(key)
                    self._events.append(TaskDone(job.shard.id, key, body, slot.label, attempt=job.attempts + 1))
        elif kind == "results":  # a worker that stored these files itself: their metrics, in one block
            try:
                joined, names, n_trades = str(msg["keys"]), list(msg["metrics"]), list(msg["n_trades"])
                keys = [joined[i:i + 64] for i in range(0, len(joined), 64)]  # (64 hex digits each)
                values = array("d", body)  # native order: such a worker runs on this machine
                ok = (self.stores_results and len(joined) % 64 == 0 and len(values) == len(keys) * len(names)
                      and len(n_trades) == len(keys))
            except (KeyError, TypeError, ValueError):
                ok = False
            if not ok:
                self._lose(slot, "worker sent a results frame it should not have")
                return
            env = slot.env.get("env")
            # the shard's own key objects, by key: the frame's copies are let go (a million keys
            # kept for the run, ~110 MB, are then the plan's own)
            own = job.remaining
            if msg.get("staged"):  # a sandboxed worker, which may not write the store itself
                try:
                    self.accept_staged(slot, str(msg["pack"]), own)
                except (OSError, BtError) as exc:
                    self._lose(slot, f"its results could not be moved into the store: {exc}")
                    return
            done = self._done_keys
            fresh = [i for i, key in enumerate(keys) if key in own and key not in done]
            if fresh:
                if len(fresh) < len(keys):  # some were reported before (a retried shard): only the others
                    width = len(names)
                    values = array("d", (v for i in fresh for v in values[i * width:(i + 1) * width]))
                    n_trades = [n_trades[i] for i in fresh]
                ours = [own[keys[i]] for i in fresh]
                done.update(ours)
                self._events.append(TasksDone(job.shard.id, ours, tuple(names), values, n_trades, slot.label, env,
                                              job.attempts + 1))
            for key in keys:
                own.pop(key, None)
        elif kind == "task_error":
            key = msg["key"]
            if key in job.remaining:
                del job.remaining[key]
                self._events.append(TaskFailed(job.shard.id, key, msg["error"], msg.get("details", ""), slot.label,
                                                  job.attempts + 1))
        elif kind == "log":
            self._events.append(ShardLog(job.shard.id, msg["text"], slot.label))
        elif kind == "differs":
            self._events.append(ResultDiffers(job.shard.id, msg["key"], msg["what"], slot.label))
        elif kind == "shard_done":
            mark(f"shard {msg['shard']} done on {slot.label} in {msg.get('seconds', 0):.3f} s")
            self._shard_ended(slot, job)
            slot.shards_done += 1
            if job.remaining:
                self._attempt_failed(job, slot, f"worker ended the shard without {len(job.remaining)} results")
            else:
                self._close_shard(job)
                self._events.append(ShardFinished(job.shard.id))
            self._dispatch()
        elif kind == "shard_error":
            self._shard_ended(slot, job)
            self._attempt_failed(job, slot, msg["error"])
            self._dispatch()

    def accept_staged(self, slot: _Slot, pack: str, keys: Container[str]) -> None:
        """Move the pack of results ``slot``'s sandboxed worker staged into the store, if it holds
        results of ``keys`` (its shard's not reported yet) only (executors whose workers store
        results themselves: ``stores_results``)."""
        raise NotImplementedError

    def _shard_ended(self, slot: _Slot, job: _Pending) -> None:
        """``job`` ended on ``slot``'s worker, which goes on with the next shard it holds."""
        if slot.jobs[0] is job:
            slot.started = time.monotonic()  # the next shard's time starts now
        slot.jobs.remove(job)
        slot.state = "busy" if slot.jobs else "idle"

    def _take_jobs(self, slot: _Slot, reason: str) -> None:
        """The slot's worker is gone: the shard it was running counts an attempt (``reason``); the
        ones waiting behind it never started and go back to the front of the queue as they are."""
        jobs, slot.jobs = slot.jobs, []
        for waiting in reversed(jobs[1:]):
            self._pending.appendleft(waiting)
        if jobs:
            self._attempt_failed(jobs[0], slot, reason)

    def _close_shard(self, job: _Pending) -> None:
        self._open.pop(job.shard.id, None)

    def _attempt_failed(self, job: _Pending, slot: _Slot, reason: str) -> None:
        job.attempts += 1
        job.errors.append(f"attempt {job.attempts} on {slot.label}: {reason}")
        slot.failures += 1
        if job.attempts >= self.options.max_attempts or not job.remaining:
            self._close_shard(job)
            if job.remaining:
                self._events.append(ShardFailed(job.shard.id, list(job.remaining), list(job.errors)))
            else:
                self._events.append(ShardFinished(job.shard.id))
        else:
            self._pending.appendleft(job)

    def _retire(self, slot: _Slot) -> None:
        ch, slot.channel = slot.channel, None
        self._gen += 1
        slot.gen = -self._gen  # frames still queued from the old process are dropped
        if ch is not None:
            ch.kill()

    def _lose(self, slot: _Slot, reason: str) -> None:
        """The worker is gone or given up for lost: requeue its shards, then restart the slot."""
        was_starting = slot.state == "starting"
        self._retire(slot)
        self._events.append(WorkerNote(slot.label, reason))
        self._take_jobs(slot, reason)
        if was_starting:
            self._slot_failed(slot, reason)
        else:
            self.on_slot_failure(slot, reason)
            slot.state = "lost"
            slot.next_spawn = time.monotonic()
        self._dispatch()

    def _slot_failed(self, slot: _Slot, reason: str) -> None:
        slot.spawn_failures += 1
        self.on_slot_failure(slot, reason)
        if slot.spawn_failures >= MAX_SPAWN_FAILURES:
            self._set_aside(slot, reason)
            return
        slot.state = "lost"
        slot.next_spawn = time.monotonic() + min(30.0, 0.5 * 2 ** (slot.spawn_failures - 1))

    def _set_aside(self, slot: _Slot, reason: str) -> None:
        jobs, slot.jobs = slot.jobs, []
        self._retire(slot)
        slot.state = "set-aside"
        self._events.append(WorkerNote(slot.label, f"set aside after repeated failures: {reason}"))
        for job in reversed(jobs):
            self._pending.appendleft(job)
        if all(s.state == "set-aside" for s in self._slots) and self._open:
            self.exhausted = f"every worker failed; last error: {reason}"

    def _maintain(self) -> None:
        self.maintain()
        now = time.monotonic()
        if now - self._last_ping > PING_SECONDS:
            self._last_ping = now
            for s in self._slots:
                if s.channel is not None and s.state in ("idle", "busy"):
                    try:
                        s.channel.send(encode({"t": "ping"}))
                    except (OSError, ValueError):
                        pass  # the reader thread reports the death
        for slot in self._slots:
            if slot.state == "lost" and now >= slot.next_spawn and not self._closed:
                self._spawn(slot)
            elif slot.channel is None:
                continue
            elif slot.state == "starting" and now - slot.started > STARTUP_TIMEOUT:
                self._lose(slot, f"worker did not start within {STARTUP_TIMEOUT:.0f} s")
            elif slot.state in ("idle", "busy") and now - slot.last_seen > self.options.heartbeat_timeout:
                self._lose(slot, f"worker stopped answering (no heartbeat for {now - slot.last_seen:.0f} s)")
            elif (
                slot.state == "busy"
                and self.options.timeout is not None
                and now - slot.started > self.options.timeout
            ):
                self._lose(slot, f"shard timed out after {self.options.timeout:g} s (--timeout)")
        self._dispatch()

    def _dispatch(self) -> None:
        # every idle worker first; then a next shard for busy ones while there is more left than
        # workers to take it (near the end, a shard queued behind another could wait while some
        # other worker is idle)
        for depth in range(1, PREFETCH + 1):
            ready = [s for s in self._slots
                     if s.channel is not None and s.state in ("idle", "busy") and len(s.jobs) < depth]
            for slot in ready:
                if not self._pending or (depth > 1 and len(self._pending) < self._usable()):
                    return
                self._give(slot, self._pending.popleft())

    def _usable(self) -> int:
        return sum(1 for s in self._slots if s.state != "set-aside")

    def _give(self, slot: _Slot, job: _Pending) -> None:
        if not slot.jobs:
            slot.started = time.monotonic()
        slot.jobs.append(job)
        slot.state = "busy"
        try:
            self.send_shard(slot, job.spec())
        except (OSError, ValueError):
            self._lose(slot, "worker closed its input")

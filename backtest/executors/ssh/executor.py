"""``ssh://h1,h2`` and ``bt run --hosts FILE``: worker processes on SSH hosts, one per core.

Each host is set up by a thread of its own — connect (host key verified), bootstrap, and one more
connection per ``WORKERS_PER_CONNECTION`` workers (sshd's ``MaxSessions`` is 10 by default) — and
its worker slots come up when it is ready: a slow or dead host holds up neither the others nor
the coordinator's loop. The ``StreamPool`` does the rest of the executor contract (dispatch,
heartbeats, timeouts, retries); this module adds the transport (``channel.WorkerChannel``:
nothing that can block on a host runs on the loop; a shard's partitions are shipped to the host
by content hash before its frame is written) and per-host health:

- a host answering but unusable (changed host key, authentication, Python, environment) is set
  aside at once, with the reason shown;
- a host that cannot be reached, or is lost while running — a worker lost and the host then fails
  a ping (crashed, frozen, cut off) — is dropped as a whole: its connections are shut, every
  in-flight shard of it goes back to the queue, and it is reconnected after 1, 2, 4 ... s; after
  ``MAX_HOST_FAILURES`` failures in a row (a finished shard resets the count) it is set aside;
- when every host is set aside, ``exhausted`` says why and the runner ends the run as
  interrupted (resumable).

Host states: connecting → ready → (down → connecting → ready ...) | set-aside. A slot of a host
that is not ready waits with no channel (state "starting" while its host connects, "lost" while
it is down); the pool skips such slots.
"""

from __future__ import annotations

import contextlib
import math
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from backtest.errors import BtError, HostError
from backtest.executors.base import ExecutorOptions, WorkerNote
from backtest.executors.pool import Channel, StreamPool, _Slot
from backtest.executors.ssh.hostsfile import HostSpec, parse_ssh_url, read_hosts_file
from backtest.spec import Shard, ShardSpec, StrategySource

WORKERS_PER_CONNECTION = 6  # + room for shipping and kill commands within sshd's MaxSessions 10
MAX_HOST_FAILURES = 4
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
PING_TIMEOUT = 3.0
COORDINATOR_TIMEOUT = 30  # a worker exits after this long without a word (even a ping) from us
CLOSE_WAIT = 3.0  # close() waits this long for remote kills to be done


@dataclass(eq=False)
class _Host:
    spec: HostSpec
    state: str = "connecting"  # connecting | ready | down | set-aside
    env: Any = None  # RemoteEnv once ready
    conns: list[Any] = field(default_factory=list)
    objects: Any = None  # HostObjects while ready
    epoch: int = 0  # bumped at every (re)connection attempt; stale reports are dropped
    failures: int = 0  # in a row
    next_try: float = 0.0
    reason: str = ""
    checking: bool = False
    done_mark: int = 0
    reports_seen: int = 0
    slots: list[_Slot] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name


class SSHExecutor(StreamPool):
    scheme: ClassVar[str] = "ssh"

    def __init__(self, specs: list[HostSpec], options: ExecutorOptions, *, url: str = "",
                 settings: Any = None) -> None:
        from backtest.executors.ssh.connect import SSHSettings
        from backtest.executors.ssh.ship import host_cache_limit

        super().__init__(options)
        self.settings: SSHSettings = settings or SSHSettings(accept_new_hosts=options.accept_new_hosts)
        self.cache_limit = host_cache_limit()  # a bad BT_HOST_CACHE_MB is one line before any host is contacted
        self.url = url or "ssh://" + ",".join(s.name for s in specs)
        self.hosts = [_Host(s) for s in specs]
        self._by_name = {h.name: h for h in self.hosts}
        self._events_in: queue.SimpleQueue[tuple[str, _Host, int, Any]] = queue.SimpleQueue()
        self._channels: list[Any] = []  # WorkerChannels not yet known to be killed
        #: test hook: corrupt shipped data (see ``ship.Tamper``)
        self.tamper: Any = None
        self.max_host_failures = MAX_HOST_FAILURES
        self.backoff_first = BACKOFF_FIRST

    @classmethod
    def from_url(cls, rest: str, options: ExecutorOptions) -> SSHExecutor:
        """``@FILE`` (a hosts file, from ``bt run --hosts FILE``) or ``h1,user@h2:2222``."""
        if rest.startswith("@"):
            return cls(read_hosts_file(rest[1:]), options, url=f"ssh://{rest}")
        return cls(parse_ssh_url(f"ssh://{rest}"), options, url=f"ssh://{rest}")

    def describe(self) -> str:
        return self.url

    # the pool's transport hooks ------------------------------------------------------------------
    def slot_names(self) -> list[tuple[str, str]]:
        """Until a host reports its cores: ``cores=N`` slots if given, else one."""
        return [(f"{h.name}/{i}", h.name) for h in self.hosts for i in range(h.spec.cores or 1)]

    def start(self, strategy: StrategySource) -> None:
        self.strategy = strategy
        self.reset_slots()
        for label, host_name in self.slot_names():
            slot = _Slot(label, host_name)
            slot.next_spawn = math.inf
            self.add_slot(slot)
            self._by_name[host_name].slots.append(slot)
        for host in self.hosts:
            self._connect(host)

    def spawn(self, label: str, host: str) -> Channel:
        from backtest.executors.ssh.channel import WorkerChannel

        h = self._by_name[host]
        slot = next(s for s in h.slots if s.label == label)
        conn = h.conns[min(h.slots.index(slot) // WORKERS_PER_CONNECTION, len(h.conns) - 1)]
        transport = conn.transport
        if transport is None or not transport.is_active():
            raise HostError(f"{host}: connection lost")
        from backtest.executors.local import worker_options

        argv = ["env", "PYTHONFAULTHANDLER=1", *h.env.worker_argv(),
                "--coordinator-timeout", str(COORDINATOR_TIMEOUT),
                *worker_options(None, self.options.max_memory, sandbox=self.options.sandbox, share=len(h.slots))]
        if self.options.sandbox:  # the bars shipped to the host; its launcher keeps only these variables
            from backtest.worker.sandbox import keep_env_arg

            argv += ["--readable", f"{h.env.cache}/objects"]
            argv.insert(0, keep_env_arg())
        gen = slot.gen

        def report(frame: dict[str, Any]) -> None:
            self.deliver(gen, frame)

        ch = WorkerChannel(label, conn, argv, python=h.spec.python_command, objects=h.objects, report=report)
        self._channels.append(ch)
        return ch

    def submit(self, shards: list[Shard]) -> None:
        super().submit(shards)
        for host in self.hosts:
            if host.state == "ready":
                self._prime(host, shards)

    def _prime(self, host: _Host, shards: list[Shard]) -> None:
        """Ask a ready host, in one call and off the loop, which of these shards' files it has."""
        files = list(dict.fromkeys(f for s in shards for f in s.spec.partitions()))
        if files:
            self._thread(self._prime_files, host.objects, files, name=f"bt-ssh-prime-{host.name}")

    @staticmethod
    def _prime_files(objects: Any, files: list[Any]) -> None:
        with contextlib.suppress(Exception):  # only an optimisation: ensure() asks when it must
            objects.prime(files)

    def send_shard(self, slot: _Slot, spec: ShardSpec) -> None:
        from backtest.executors.ssh.channel import WorkerChannel

        assert isinstance(slot.channel, WorkerChannel)
        slot.channel.send_shard(spec)

    def may_spawn(self, slot: _Slot) -> bool:
        host = self._by_name[slot.host]
        if host.state == "ready" and not self.closed:
            return True
        self._park(slot, host)  # wait, without a channel, until the host is (back) up
        return False

    def on_slot_failure(self, slot: _Slot, reason: str) -> None:
        host = self._by_name[slot.host]
        if host.state == "ready" and not host.checking and not self.closed:
            host.checking = True
            self._thread(self._check, host, host.epoch, list(host.conns), name=f"bt-ssh-check-{host.name}")

    def maintain(self) -> None:
        self._take_host_events()
        now = time.monotonic()
        for host in self.hosts:
            if self.closed:
                break
            if host.state == "down" and now >= host.next_try:
                self._connect(host)
            elif host.state == "ready":
                done = sum(s.shards_done for s in host.slots)
                if done > host.done_mark:
                    host.done_mark, host.failures = done, 0
                reports = host.objects.reports
                for r in reports[host.reports_seen:]:
                    if r.resent:
                        self._note(host, f"{len(r.resent)} file(s) arrived damaged and were sent again")
                host.reports_seen = len(reports)
        self._channels = [ch for ch in self._channels if not ch.gone()]
        if self.has_work() and all(h.state == "set-aside" for h in self.hosts):
            self.exhausted = "every host failed: " + "; ".join(f"{h.name}: {h.reason}" for h in self.hosts)

    def close(self, *, cancel: bool = False) -> None:
        if self.closed:
            return
        super().close(cancel=cancel)  # retires every slot: each channel is killed in a thread
        deadline = time.monotonic() + CLOSE_WAIT
        for ch in self._channels:
            ch.wait_killed(deadline - time.monotonic())
        self._take_host_events()  # hosts that became ready meanwhile are shut below
        for host in self.hosts:
            self._shut(host.conns)
            host.conns = []

    # hosts -----------------------------------------------------------------------------------------
    @staticmethod
    def _thread(target: Any, *args: Any, name: str) -> None:
        threading.Thread(target=target, args=args, daemon=True, name=name).start()

    def _wake(self) -> None:
        self.deliver(0, None, None)

    def _connect(self, host: _Host) -> None:
        host.epoch += 1
        host.state = "connecting"
        for slot in host.slots:
            if slot.channel is None and slot.state == "lost":
                slot.state = "starting"
        self._thread(self._setup, host, host.epoch, name=f"bt-ssh-setup-{host.name}")

    def _setup(self, host: _Host, epoch: int) -> None:
        """Thread: connect and bootstrap one host, then report to the loop."""
        from backtest.executors.ssh.bootstrap import bootstrap
        from backtest.executors.ssh.connect import HostRefused, connect

        conns: list[Any] = []
        try:
            conns.append(connect(host.spec, self.settings))
            # the files shipped for earlier runs are bounded before this run ships its own
            env = bootstrap(conns[0], host.spec, trim=self.cache_limit)
            for _ in range(math.ceil(env.cores / WORKERS_PER_CONNECTION) - 1):
                conns.append(connect(host.spec, self.settings))
            event: tuple[str, Any] = ("ready", (env, conns))
        except HostRefused as exc:
            event = ("refused", str(exc))
        except BtError as exc:
            event = ("failed", str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug or an odd paramiko error: report it, retry
            event = ("failed", f"{host.name}: {type(exc).__name__}: {exc}")
        if event[0] != "ready":
            self._shut(conns)
        self._events_in.put((event[0], host, epoch, event[1]))
        self._wake()
        if self.closed:
            self._shut(conns)

    def _check(self, host: _Host, epoch: int, conns: list[Any]) -> None:
        """Thread: after a worker was lost, is its host still there?"""
        from backtest.executors.ssh.connect import ping

        reason = None if conns else "no connection"
        for conn in conns:
            if conn.transport is None or not conn.transport.is_active():
                reason = "connection lost"
                break
        if reason is None:
            try:
                ping(conns[0], timeout=PING_TIMEOUT)
            except HostError:
                reason = f"no answer to an SSH ping within {PING_TIMEOUT:g} s"
        self._events_in.put(("lost" if reason else "ok", host, epoch, reason))
        self._wake()

    def _take_host_events(self) -> None:
        while True:
            try:
                kind, host, epoch, data = self._events_in.get_nowait()
            except queue.Empty:
                return
            if epoch != host.epoch or host.state == "set-aside" or self.closed:
                if kind == "ready":
                    self._shut(data[1])
                continue
            if kind == "ready":
                self._ready(host, *data)
            elif kind == "refused":
                host.slots[0].failures += 1  # one failure to show in the display
                self._set_host_aside(host, self._strip(host, data))
            elif kind == "failed":
                self._host_failed(host, self._strip(host, data))
            elif kind == "lost" and host.state == "ready":
                host.checking = False
                self._host_failed(host, f"host lost: {data}")
            elif kind == "ok":
                host.checking = False

    @staticmethod
    def _strip(host: _Host, message: str) -> str:
        prefix = f"{host.name}: "
        return message[len(prefix):] if message.startswith(prefix) else message

    def _note(self, host: _Host, message: str) -> None:
        self.emit(WorkerNote(host.name, message))

    def _ready(self, host: _Host, env: Any, conns: list[Any]) -> None:
        from backtest.executors.ssh.ship import HostObjects

        host.state, host.env, host.conns, host.reason = "ready", env, conns, ""
        host.objects = HostObjects(conns[0], env.cache, Path(self.options.data_root),
                                   python=host.spec.python_command, tamper=self.tamper,
                                   store=self._object_store(), command=env.command())
        host.reports_seen = 0
        while len(host.slots) < env.cores:
            slot = _Slot(f"{host.name}/{len(host.slots)}", host.name)
            host.slots.append(slot)
            self.add_slot(slot)
        for slot in host.slots[env.cores:]:  # the host has fewer cores than before: drop the rest
            if slot.channel is None:
                host.slots.remove(slot)
                self.remove_slot(slot)
        self._prime(host, self.in_flight())
        how = f", environment installed in {env.seconds:.0f} s" if env.installed else ""
        workers = f"{env.cores} worker{'s' if env.cores != 1 else ''}"
        self._note(host, f"ready: {workers}, Python {env.python_version}{how}")
        for slot in host.slots:
            if slot.channel is None and slot.state in ("starting", "lost"):
                self.spawn_slot(slot)

    def _object_store(self) -> Any:
        """The run's object store (its bars are fetched by the hosts that reach it), or None."""
        if not hasattr(self, "_store"):
            from backtest.data import Store

            store = Store(Path(self.options.data_root))
            self._store = store if store.remote else None
        return self._store

    def _host_failed(self, host: _Host, reason: str) -> None:
        """The host could not be reached or was lost: drop it; retry later, or set it aside."""
        host.failures += 1
        host.reason = reason
        if not any(s.job for s in host.slots):  # else each lost shard counts as a failure already
            host.slots[0].failures += 1
        if host.failures >= self.max_host_failures:
            self._set_host_aside(host, f"{reason} ({host.failures} failures in a row)")
            return
        delay = min(BACKOFF_MAX, self.backoff_first * 2 ** (host.failures - 1))
        host.state = "down"
        host.next_try = time.monotonic() + delay
        self._drop(host, reason)
        self._note(host, f"{reason}; retrying in {delay:g} s")

    def _set_host_aside(self, host: _Host, reason: str) -> None:
        host.state = "set-aside"
        host.reason = reason
        self._drop(host, reason)
        for slot in host.slots:
            slot.state = "set-aside"
        self._note(host, f"set aside: {reason}")

    def _drop(self, host: _Host, reason: str) -> None:
        """Shut the host's connections and give up its workers: their shards go back to the queue
        (an attempt each, as when a worker dies) and the slots wait for the host."""
        conns, host.conns = host.conns, []
        self._shut(conns)
        for slot in host.slots:
            self.release(slot, f"host lost: {reason}")
            self._park(slot, host)
        self.dispatch()

    @staticmethod
    def _park(slot: _Slot, host: _Host) -> None:
        slot.channel = None
        slot.next_spawn = math.inf
        slot.state = {"connecting": "starting", "down": "lost"}.get(host.state, "set-aside")

    def _shut(self, conns: list[Any]) -> None:
        """Close connections without blocking: shutting the socket first unblocks any thread
        stuck writing to a frozen or cut-off host; the rest happens in a thread."""
        for conn in conns:
            transport = conn.transport
            sock = getattr(transport, "sock", None)
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        if conns:
            threading.Thread(target=self._close_all, args=(conns,), daemon=True, name="bt-ssh-close").start()

    @staticmethod
    def _close_all(conns: list[Any]) -> None:
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()

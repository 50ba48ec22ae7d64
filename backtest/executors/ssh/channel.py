"""One worker process on a host, as the StreamPool's ``Channel`` — without ever blocking the pool.

The pool's loop must stay responsive while a host is slow, frozen or cut off, and everything
paramiko does may block there: opening a channel (a round trip), writing (``sendall`` waits when
the peer's window is full), closing (a message through a transport that may be stuck) and
killing (a remote command). So:

- the channel is returned at once and opened by its own thread (``open_stream``); ``stdout``
  blocks the pool's reader thread, never the loop, until it is open — or ends at once when it
  could not be opened, which the pool treats like a worker that died before saying hello;
- ``send`` only queues: a writer thread writes frames in order;
- ``send_shard`` queues a shard for a shipper thread, which first makes the host hold the shard's
  partitions and its benchmark's (``HostObjects.ensure``), rewrites the spec to the host's copies,
  and then queues the frame; pings keep flowing while data ships;
- ``kill`` closes the channel (the host-side launcher then kills the worker's process group) and
  kills the group explicitly, in a thread; ``wait_killed`` lets ``close`` wait a bounded time.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import IO, TYPE_CHECKING, Any, cast

from backtest.errors import BtError
from backtest.executors.pool import Channel
from backtest.worker.protocol import encode

if TYPE_CHECKING:
    import fabric

    from backtest.executors.ssh.ship import HostObjects
    from backtest.executors.ssh.stream import RemoteProcess
    from backtest.spec import ShardSpec

#: Called with a frame the worker should be thought to have sent (a shard whose data could not
#: be shipped comes back as a ``shard_error``).
Report = Callable[[dict[str, Any]], None]

KILL_GRACE = 1.0


class _Output:
    """The worker's stdout for the pool's reader thread: waits until the channel is open."""

    def __init__(self, owner: WorkerChannel) -> None:
        self._owner = owner

    def read(self, n: int = -1) -> bytes:
        owner = self._owner
        owner._gate.wait()
        proc = owner._proc
        if proc is None or owner._killed:
            return b""
        try:
            return cast(bytes, proc.stdout.read(n))
        except Exception:  # noqa: BLE001 - paramiko raises a variety when a link dies: that is the end
            return b""


class WorkerChannel(Channel):
    def __init__(
        self,
        label: str,
        conn: fabric.Connection,
        argv: Sequence[str],
        *,
        python: str,
        objects: HostObjects,
        report: Report,
    ) -> None:
        self.label = label
        self._conn = conn
        self._argv = list(argv)
        self._python = python
        self._objects = objects
        self._report = report
        self._lock = threading.Lock()
        self._gate = threading.Event()  # set when the open attempt ended or the channel was killed
        self._proc: RemoteProcess | None = None
        self._killed = False
        self._error: str | None = None
        self._frames: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._shards: queue.SimpleQueue[ShardSpec | None] = queue.SimpleQueue()
        self._kill_thread: threading.Thread | None = None
        self.stdout = cast(IO[bytes], _Output(self))
        threading.Thread(target=self._write_loop, daemon=True, name=f"bt-ssh-write-{label}").start()
        threading.Thread(target=self._ship_loop, daemon=True, name=f"bt-ssh-ship-{label}").start()

    # what the pool calls -------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        if not self._killed:
            self._frames.put(data)

    def send_shard(self, spec: ShardSpec) -> None:
        if not self._killed:
            self._shards.put(spec)

    def kill(self) -> None:
        with self._lock:
            if self._killed:
                return
            self._killed = True
            proc = self._proc
        self._gate.set()
        self._frames.put(None)
        self._shards.put(None)
        if proc is not None:
            self._kill_thread = threading.Thread(target=self._kill_now, args=(proc,), daemon=True,
                                                 name=f"bt-ssh-kill-{self.label}")
            self._kill_thread.start()

    def gone(self) -> bool:
        """Killed, and the kill (if one was needed) is done."""
        return self._killed and (self._kill_thread is None or not self._kill_thread.is_alive())

    def wait_killed(self, timeout: float) -> None:
        if self._kill_thread is not None:
            self._kill_thread.join(max(0.0, timeout))

    def describe_exit(self) -> str:
        proc = self._proc
        if proc is None:
            return self._error or "the worker was never started"
        channel = proc.channel
        transport = channel.get_transport()
        alive = transport is not None and transport.is_active()
        if alive and not channel.exit_status_ready():
            channel.status_event.wait(0.3)  # the exit status follows the end of output closely
        status = channel.recv_exit_status() if channel.exit_status_ready() else None
        if status is None or status == -1:
            what = "the connection to its host was lost" if not alive else "its SSH channel closed"
        elif status > 128:
            try:
                what = f"killed by {signal.Signals(status - 128).name}"
            except ValueError:
                what = f"exit status {status}"
        else:
            what = f"exit code {status}" + (" (no word from the coordinator)" if status == 4 else "")
        if self._error:
            what += f"; {self._error}"
        lines = [ln for ln in proc.stderr_text().strip().splitlines() if ln.strip()][-3:]
        return what + (f" ({' | '.join(lines)})" if lines else "")

    # threads -------------------------------------------------------------------------------------
    def _open(self) -> RemoteProcess | None:
        from backtest.executors.ssh.stream import open_stream

        try:
            proc = open_stream(self._conn, self._argv, python=self._python)
        except Exception as exc:  # noqa: BLE001 - any failure to start is reported, not raised
            self._error = f"could not start a worker: {exc}"
            self._gate.set()
            return None
        with self._lock:
            killed = self._killed
            if not killed:
                self._proc = proc
        self._gate.set()
        if killed:
            self._kill_now(proc)
            return None
        return proc

    def _write_loop(self) -> None:
        proc = self._open()
        if proc is None:
            return
        while True:
            data = self._frames.get()
            if data is None or self._killed:
                return
            try:
                proc.channel.sendall(data)
            except Exception as exc:  # noqa: BLE001 - a broken channel: end it so the reader sees it
                self._error = f"writing to the worker failed: {exc}"
                with contextlib.suppress(Exception):
                    proc.channel.close()
                return

    def _ship_loop(self) -> None:
        while True:
            spec = self._shards.get()
            if spec is None or self._killed:
                return
            try:
                spec = self._on_host(spec)
            except Exception as exc:  # noqa: BLE001 - whatever went wrong is reported for this shard
                transport = self._objects.conn.transport
                if transport is None or not transport.is_active():
                    # the host is gone: end the channel; the pool requeues the shard
                    self._error = f"shipping the shard's data failed: {exc}"
                    proc = self._proc
                    if proc is not None:
                        with contextlib.suppress(Exception):
                            proc.channel.close()
                    return
                error = str(exc) if isinstance(exc, BtError) else f"shipping data failed: {type(exc).__name__}: {exc}"
                self._report({"t": "shard_error", "shard": spec.id, "error": error, "details": ""})
                continue
            self.send(encode({"t": "shard", "shard": spec.to_wire()}))

    def _on_host(self, spec: ShardSpec) -> ShardSpec:
        """``spec`` naming the host's copies of its partitions (the benchmark's too), shipped first
        where the host lacks them."""
        n = len(spec.files)
        there = tuple(self._objects.ensure(spec.partitions()))
        return replace(spec, files=there[:n], benchmark_files=there[n:])

    def _kill_now(self, proc: RemoteProcess) -> None:
        with contextlib.suppress(Exception):
            proc.kill(grace=KILL_GRACE)

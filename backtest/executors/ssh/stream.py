"""Long-lived remote processes over SSH exec channels, with byte-stream stdin/stdout and no orphans.

``open_stream(conn, argv)`` starts ``argv`` on the host under the agent's ``launch`` command,
which ``setsid()`` s (so the process group id is known and recorded under
``~/.cache/bt/procs/``), runs ``argv`` as its child with the channel's stdin/stdout, and kills
the whole group when the channel goes away (sshd closes the pipe; the watchdog polls for that).
``RemoteProcess.kill()`` closes the channel and, when the connection still works, also kills the
recorded group explicitly. Phase 2 opens one of these per worker::

    env = bootstrap(conn, spec)
    proc = open_stream(conn, env.worker_argv(), python=spec.python_command)
    proc.stdin.write(frame); proc.stdin.flush(); reply = proc.stdout.read(n)

Several channels share one connection (sshd's ``MaxSessions``, 10 by default, caps how many).
"""

from __future__ import annotations

import collections
import contextlib
import re
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from backtest.errors import HostError
from backtest.executors.ssh.connect import exec_command, host_label, quote_argv, sh_argv
from backtest.executors.ssh.remote import agent_argv

if TYPE_CHECKING:
    import fabric
    import paramiko

_PGID = re.compile(rb"(?m)^bt-pgid (\d+)\n")


class RemoteProcess:
    """A process on a host. ``stdin``/``stdout`` are binary file-likes over the SSH channel."""

    def __init__(self, conn: fabric.Connection, channel: paramiko.Channel, argv: Sequence[str]) -> None:
        self.conn = conn
        self.channel = channel
        self.argv = list(argv)
        self.stdin = channel.makefile_stdin("wb")
        self.stdout = channel.makefile("rb")
        self.pgid: int | None = None
        self._pgid_known = threading.Event()
        self._stderr: collections.deque[bytes] = collections.deque(maxlen=256)
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()

    def _drain_stderr(self) -> None:
        """Read stderr all the time (a full stderr window would stall stdout too)."""
        head = b""
        while True:
            try:
                data = self.channel.recv_stderr(65536)
            except Exception:
                data = b""
            if not data:
                if head:  # the launcher failed before its first line: its stderr is the reason
                    self._stderr.append(head)
                self._pgid_known.set()
                return
            if self.pgid is None and not self._pgid_known.is_set():
                # the launcher's first line; a Python that warns at startup may write lines first
                head += data
                match = _PGID.search(head)
                if match:
                    self.pgid = int(match.group(1))
                    data = head[: match.start()] + head[match.end() :]
                    self._pgid_known.set()
                elif len(head) > 65536:
                    data, head = head, b""
                    self._pgid_known.set()
                else:
                    continue
            if data:
                self._stderr.append(data)

    def wait_started(self, timeout: float = 10.0) -> int:
        """Block until the host reported the process group id; return it."""
        if not self._pgid_known.wait(timeout) or self.pgid is None:
            lines = [ln.strip() for ln in self.stderr_text().splitlines() if ln.strip()]
            if lines:
                why = lines[-1][-300:]
            elif self.channel.status_event.wait(1.0):  # stderr ended; the exit status follows
                why = f"exit status {self.channel.recv_exit_status()}, nothing on stderr"
            else:
                why = f"no word from the host within {timeout:g} s"
            raise HostError(f"{host_label(self.conn)}: the process did not start: {why}")
        return self.pgid

    def stderr_text(self) -> str:
        return b"".join(self._stderr).decode("utf-8", "replace")

    def close_stdin(self) -> None:
        with contextlib.suppress(Exception):
            self.stdin.flush()
        with contextlib.suppress(Exception):
            self.channel.shutdown_write()

    def poll(self) -> int | None:
        """Exit status once the remote process has ended, else None."""
        if self.channel.exit_status_ready():
            return self.channel.recv_exit_status()
        if self.channel.closed or not self.channel.get_transport().is_active():
            return -1
        return None

    def wait(self, timeout: float | None = None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.poll()
            if status is not None:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                return None
            self.channel.status_event.wait(0.1)

    def kill(self, grace: float = 1.0) -> None:
        """Stop the remote process group: close the channel (the watchdog kills the group) and,
        when the connection still answers, kill the recorded group explicitly too."""
        with contextlib.suppress(Exception):
            self.channel.close()
        if self.pgid is None:
            return
        transport = self.conn.transport
        if transport is None or not transport.is_active():
            return
        steps = max(1, int(grace / 0.05))
        # TERM, then KILL whatever is left after ``grace`` (the launcher ignores TERM). No "--":
        # dash's kill (Debian's /bin/sh) takes it for a pid and fails.
        script = (
            f"kill -TERM -{self.pgid} 2>/dev/null || exit 0; i=0; "
            f"while [ $i -lt {steps} ]; do sleep 0.05; kill -0 -{self.pgid} 2>/dev/null || exit 0; "
            f"i=$((i+1)); done; kill -KILL -{self.pgid} 2>/dev/null; exit 0"
        )
        with contextlib.suppress(HostError):
            exec_command(self.conn, sh_argv(script), timeout=grace + 10)

    def __enter__(self) -> RemoteProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def open_stream(
    conn: fabric.Connection,
    argv: Sequence[str],
    *,
    python: str = "python3",
    wait_started: bool = True,
) -> RemoteProcess:
    """Start ``argv`` on the host as a long-lived process over its own exec channel.

    ``python`` is any Python on the host; it runs the small launcher (setsid + watchdog).
    """
    transport = conn.transport
    if transport is None or not transport.is_active():
        raise HostError(f"{host_label(conn)}: not connected")
    try:
        channel = transport.open_session(timeout=30)
        channel.exec_command(quote_argv(agent_argv(python, "launch", *argv)))
    except Exception as exc:
        raise HostError(f"{host_label(conn)}: cannot start {argv[0]}: {exc}") from exc
    proc = RemoteProcess(conn, channel, argv)
    if wait_started:
        proc.wait_started()
    return proc

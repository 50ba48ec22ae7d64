"""Local workers forked from one warm process (a fork server), instead of each starting Python.

A worker's start-up is mostly fixed cost: the interpreter, numpy and numba's import, and numba
setting its compiler up the first time it loads a kernel — about 0.6 CPU-seconds, paid by every
worker. On a machine with few cores that start-up competes with the coordinator's planning and
the first shards for the same cores. The fork server (``python -m backtest.worker --fork-server
FD``) pays it once: it imports and warms up, then forks each worker on request, and the forked
worker starts serving at once. Each worker still is a process of its own (own session, memory
cap, stdin/stdout pipes to the coordinator), so timeouts, kills and the memory cap behave exactly
as with a worker started from scratch.

The control socket is a ``SOCK_SEQPACKET`` pair (one message per send). The coordinator sends
``{"argv": [...]}`` with the worker's stdin, stdout and stderr as ``SCM_RIGHTS`` file
descriptors; the server answers ``{"pid": N}`` (or ``{"error": ...}``) and later reports each
worker's end as ``{"exit": N, "status": S}`` (``S`` as ``Popen.returncode``: ``-signal`` or the
exit code). The server is single-threaded (forking a process with threads risks copying a held
lock) and exits when its control socket closes, e.g. when the coordinator dies.

Starting a server is cheap (a Popen, or, for workers without the sandbox, a fork of the
coordinator while that is still single-threaded). ``bt run --force`` on this machine starts one
first of all, as soon as its options are parsed (``preload``, through ``executors.preload``), so
that it warms up while the job is planned; ``adopt`` hands it to the local executor, which
otherwise starts its own. Where there is no ``fork`` or ``SOCK_SEQPACKET`` (not Linux), with
``BT_NO_FORK_SERVER=1``, or when the server fails, workers start the ordinary way (``enabled``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

SUPPORTED = sys.platform.startswith("linux") and hasattr(socket, "SOCK_SEQPACKET") and hasattr(os, "fork")
_MAX_MSG = 65536


def enabled() -> bool:
    """Whether local workers are forked from a fork server (``BT_NO_FORK_SERVER=1``: never)."""
    return SUPPORTED and not os.environ.get("BT_NO_FORK_SERVER")


def worker_env(sandbox: bool = False) -> dict[str, str]:
    """A local worker's environment: this one, with numba on one thread and the BLAS and OpenMP
    pools on one thread unless set otherwise (``backtest.worker.tuning.POOLS``); for a sandboxed
    worker only the variables of the sandbox's allow-list (``backtest.worker.sandbox.clean_env``),
    so that no secret ever enters its memory."""
    from backtest.worker.tuning import POOLS

    env = {**POOLS, **os.environ, "NUMBA_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    if sandbox:
        from backtest.worker.sandbox import clean_env

        env = clean_env(env)
    return env


class ForkServer:
    """The coordinator's handle on a fork server process.

    ``forked=True`` makes the server a fork of this process instead of a new interpreter: it
    saves the interpreter's start (~50 ms on the way to the first result). Only safe while this
    process has a single thread (``preload`` checks), and only for workers without the sandbox
    (``sandbox``): a fork has all this process holds, such as a secret that its command line read
    from the environment (``--remote-cache`` from BT_REMOTE_CACHE), where a sandboxed worker must
    find none; a server for sandboxed workers is a new interpreter started with the sandbox's
    environment only."""

    def __init__(self, python: str = sys.executable, *, forked: bool = False, sandbox: bool = False) -> None:
        self.sandbox = sandbox
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            if forked and not sandbox:
                self.proc: subprocess.Popen[bytes] | _Forked = _Forked(_fork_server(theirs.fileno(), self._sock))
            else:
                self.proc = subprocess.Popen(
                    [python, "-m", "backtest.worker", "--fork-server", str(theirs.fileno()),
                     *(["--sandbox"] if sandbox else [])],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=None if os.environ.get("BT_TRACE") else subprocess.DEVNULL,  # only its trace lines
                    pass_fds=[theirs.fileno()], start_new_session=True, env=worker_env(sandbox),
                )
        finally:
            theirs.close()
        self._lock = threading.Lock()  # one request at a time: replies come in order
        self._replies: list[dict[str, Any]] = []
        self._exits: dict[int, int] = {}
        self._cond = threading.Condition()
        self._closed = False
        self.broken = False  # a fork failed: start further workers the ordinary way
        threading.Thread(target=self._read, daemon=True, name="bt-forkserver").start()

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(_MAX_MSG)
            except OSError:
                data = b""
            with self._cond:
                if not data:
                    self._closed = True
                    self._cond.notify_all()
                    return
                msg = json.loads(data)
                if "exit" in msg:
                    self._exits[int(msg["exit"])] = int(msg["status"])
                else:
                    self._replies.append(msg)
                self._cond.notify_all()

    def alive(self) -> bool:
        return not self._closed and not self.broken and self.proc.poll() is None

    def fork(self, argv: list[str], stdin: int, stdout: int, stderr: int, timeout: float = 60.0) -> int:
        """A new worker with ``argv`` (the worker's options) on these descriptors; its pid.
        Raises OSError when the server cannot fork it (the caller starts one the ordinary way)."""
        with self._lock:
            msg = json.dumps({"argv": argv}).encode()
            try:
                socket.send_fds(self._sock, [msg], [stdin, stdout, stderr])
            except OSError as exc:
                raise OSError(f"fork server unreachable: {exc}") from exc
            with self._cond:
                if not self._cond.wait_for(lambda: self._replies or self._closed, timeout):
                    raise OSError("fork server did not answer")
                if not self._replies:
                    raise OSError("fork server ended")
                reply = self._replies.pop(0)
        if "pid" not in reply:
            raise OSError(f"fork server could not fork: {reply.get('error')}")
        return int(reply["pid"])

    def wait(self, pid: int, timeout: float) -> int | None:
        """The worker's exit status once it ended (as ``Popen.returncode``), else None."""
        with self._cond:
            self._cond.wait_for(lambda: pid in self._exits or self._closed, timeout)
            return self._exits.get(pid)

    def close(self) -> None:
        """Stop the server at once (it may still be warming up; it holds no work, and the
        workers it forked are processes of their own, stopped by their channels)."""
        self.proc.kill()
        self.proc.wait()
        self._sock.close()


_PRELOADED: ForkServer | None = None


def preload(sandbox: bool = True) -> None:
    """Start a fork server now, for the local executor of this process to ``adopt`` later; an
    ``atexit`` handler stops it if nobody did (``discard``)."""
    global _PRELOADED
    if enabled() and _PRELOADED is None:
        import atexit

        try:
            _PRELOADED = ForkServer(forked=_single_threaded(), sandbox=sandbox)
        except OSError:
            _PRELOADED = None
        else:
            atexit.register(discard)  # whatever happens to the command, the server ends with it


def _single_threaded() -> bool:
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


class _Forked:
    """``Popen``'s part that ``ForkServer`` uses, for a server forked from this process."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = 0  # reaped elsewhere
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def wait(self) -> int:
        if self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                self.returncode = 0
        return self.returncode


def _fork_server(fd: int, ours: socket.socket) -> int:
    """Fork this (single-threaded) process into a fork server on control socket ``fd`` for
    workers without the sandbox; the child is set up as ``ForkServer``'s Popen would set a new
    interpreter up."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        ours.close()
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1) if os.environ.get("BT_TRACE") else (0, 1, 2):
            os.dup2(null, target)
        os.close(null)
        os.environ.update(worker_env())
        import faulthandler

        faulthandler.enable()
        from backtest.worker.main import main

        main(["--fork-server", str(fd)])
        code = 0
    except BaseException:  # noqa: S110 - nothing to report to: the coordinator sees the socket close
        pass
    finally:
        os._exit(code)


def adopt(sandbox: bool = True) -> ForkServer | None:
    """The preloaded fork server (now the caller's to close), or None (also when it was started
    for the other sandbox mode: it is stopped)."""
    global _PRELOADED
    server, _PRELOADED = _PRELOADED, None
    if server is not None and server.sandbox != sandbox:
        server.close()
        return None
    return server if server is not None and server.alive() else None


def discard() -> None:
    """Stop a preloaded fork server nobody adopted (nothing to run after all)."""
    server = adopt()
    if server is not None:
        server.close()

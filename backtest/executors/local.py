"""``local://N``: N worker processes on this machine (default: one per core)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from abc import abstractmethod
from collections.abc import Container
from typing import IO, Any, ClassVar

from backtest.executors import cores
from backtest.executors.forkserver import ForkServer, adopt, enabled, worker_env
from backtest.executors.pool import Channel, StreamPool
from backtest.spec import StrategySource


def worker_options(data_root: str | None, max_memory: int | None, results: str | None = None,
                   sandbox: bool = False, share: int = 1) -> list[str]:
    """The worker program's options (``python -m backtest.worker --help``)."""
    argv: list[str] = []
    if data_root:
        argv += ["--data", data_root]
    if results:
        argv += ["--results", results]
    if max_memory is not None and (max_memory or sandbox):
        argv += ["--max-memory", str(max_memory)]
    if sandbox:
        argv += ["--sandbox", "--share", str(share)]
    return argv


class _LocalChannel(Channel):
    _err: IO[bytes]

    @property
    @abstractmethod
    def pid(self) -> int:
        """The worker's pid (its process group's too), or -1 if it never started."""

    def signal_kill(self) -> None:
        """SIGKILL the worker's process group without waiting (``kill`` then waits)."""
        if self.pid > 0:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self._kill_unled()

    def _kill_unled(self) -> None:
        """A worker that is not yet the leader of its own process group (see ``ForkedChannel``)."""

    @abstractmethod
    def exit_status(self, timeout: float) -> int | None:
        """The exit status as ``Popen.returncode`` once the worker ended, else None."""

    def describe_exit(self) -> str:
        code = self.exit_status(2)
        if code is None:
            what = getattr(self, "error", "") or "still running"
        elif code < 0:
            what = f"killed by {signal.Signals(-code).name}"
        else:
            what = f"exit code {code}"
        self._err.seek(0)
        tail = self._err.read()[-2000:].decode("utf-8", "replace").strip().splitlines()[-3:]
        return what + (f" ({' | '.join(tail)})" if tail else "")


class ProcessChannel(_LocalChannel):
    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self._err = tempfile.TemporaryFile()
        # A session of its own: Ctrl+C in the terminal reaches the coordinator only, which then
        # stops the workers in order.
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
            start_new_session=True, env=env,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin = self.proc.stdin
        self.stdout = self.proc.stdout

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        self.signal_kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        self._err.close()  # the worker's captured stderr: read by describe_exit, before the kill

    def exit_status(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None


class ForkedChannel(_LocalChannel):
    """A worker forked by a ``ForkServer``: the same interface as a worker started by Popen.

    The pipes exist at once; the fork itself is asked for by a thread, so that the pool's loop
    never waits for a server that is still warming up (frames sent meanwhile wait in the pipe,
    and the pool's reader simply sees the worker's hello later)."""

    def __init__(self, server: ForkServer, argv: list[str], err: IO[bytes]) -> None:
        self._server = server
        self._err = err
        self._pid = -1
        self.error = ""
        in_r, in_w = os.pipe()  # only the worker's ends go to the server (non-inheritable: PEP 446)
        out_r, out_w = os.pipe()
        self.stdin = os.fdopen(in_w, "wb")
        self.stdout = os.fdopen(out_r, "rb")
        self._forked = threading.Event()
        threading.Thread(target=self._fork, args=(argv, in_r, out_w), daemon=True, name="bt-fork").start()

    def _fork(self, argv: list[str], in_r: int, out_w: int) -> None:
        try:
            self._pid = self._server.fork(argv, in_r, out_w, self._err.fileno())
        except OSError as exc:
            self.error = str(exc)
            self._server.broken = True
        finally:
            os.close(in_r)
            os.close(out_w)  # with no fork, the reader sees the output end: a worker that never started
            self._forked.set()

    @property
    def pid(self) -> int:
        self._forked.wait(60)
        return self._pid

    def _kill_unled(self) -> None:
        """A worker forked a moment ago, before its ``setsid``, is still in the fork server's
        process group: kill it by its pid (only then: a pid that ended may name another process)."""
        try:
            if os.getpgid(self._pid) == self._server.proc.pid:
                os.kill(self._pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        self.signal_kill()
        if self.pid > 0:
            self._server.wait(self.pid, 5)
        for stream in (self.stdin, self.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self._err.close()

    def exit_status(self, timeout: float) -> int | None:
        pid = self.pid
        return self._server.wait(pid, timeout) if pid > 0 else None


class _RawKeys:
    """The raw keys whose hex digits are in ``keys``: a shard's pending keys as the container of
    raw keys a staged pack is checked against, without a set of them made for each shard (a
    million-task run kept ~90 MB of such sets)."""

    __slots__ = ("keys",)

    def __init__(self, keys: Container[str]) -> None:
        self.keys = keys

    def __contains__(self, raw: object) -> bool:
        return isinstance(raw, bytes) and raw.hex() in self.keys


class LocalExecutor(StreamPool):
    """Workers are forked from one warm fork server (``forkserver``) where the platform allows,
    else started as ``python -m backtest.worker``; either way each is a process of its own."""

    scheme: ClassVar[str] = "local"
    stores_results: ClassVar[bool] = True
    _server: ForkServer | None = None
    _store: Any = None  # the results store staged packs are moved into

    def __init__(self, options: Any) -> None:
        super().__init__(options)

    def slot_names(self) -> list[tuple[str, str]]:
        n = self.options.workers or cores()
        return [(f"local-{i}", "localhost") for i in range(n)]

    def start(self, strategy: StrategySource) -> None:
        sandbox = self.options.sandbox
        self._server = adopt(sandbox) or (ForkServer(sandbox=sandbox) if enabled() else None)
        super().start(strategy)

    def spawn(self, label: str, host: str) -> Channel:
        # Workers on this machine write result files into the store themselves: only a few hundred
        # bytes a task cross the pipe instead of every trade (50 KB a task on minute bars).
        root = str(self.options.data_root)
        n = self.options.workers or cores()
        options = worker_options(root, self.options.max_memory, results=root, sandbox=self.options.sandbox, share=n)
        server = self._server
        if server is not None and server.alive():
            return ForkedChannel(server, options, tempfile.TemporaryFile())
        return ProcessChannel([sys.executable, "-m", "backtest.worker", *options], worker_env(self.options.sandbox))

    def accept_staged(self, slot: Any, pack: str, keys: Container[str]) -> None:
        from backtest.store.results import ResultStore
        from backtest.worker.sandbox import staging_dir

        assert isinstance(slot.channel, _LocalChannel)
        root = self.options.data_root
        if self._store is None:
            self._store = ResultStore(root)
        self._store.accept_pack(staging_dir(root, slot.channel.pid), pack, _RawKeys(keys))

    def close(self, *, cancel: bool = False) -> None:
        if not self._closed:
            # every worker is killed first, so that closing waits for all of them at once
            for slot in self.slots:
                if isinstance(slot.channel, _LocalChannel):
                    slot.channel.signal_kill()
        super().close(cancel=cancel)
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if self.options.sandbox:  # what killed sandboxed workers could not remove themselves
            from backtest.worker.sandbox import remove_empty_cgroups, remove_stale, staging_dir

            remove_stale()
            remove_stale(str(staging_dir(self.options.data_root, 0).parent), prefix="")
            remove_empty_cgroups()

    def describe(self) -> str:
        return f"local://{self.options.workers or cores()}"

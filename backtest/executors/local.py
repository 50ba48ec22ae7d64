"""``local://N``: N worker processes on this machine (default: one per core)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from typing import ClassVar

from backtest.executors.pool import Channel, StreamPool


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def worker_argv(python: str, data_root: str | None, max_memory: int | None, results: str | None = None) -> list[str]:
    argv = [python, "-m", "backtest.worker"]
    if data_root:
        argv += ["--data", data_root]
    if results:
        argv += ["--results", results]
    if max_memory:
        argv += ["--max-memory", str(max_memory)]
    return argv


class ProcessChannel(Channel):
    def __init__(self, argv: list[str]) -> None:
        self._err = tempfile.TemporaryFile()
        env = dict(os.environ, NUMBA_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
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
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
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

    def describe_exit(self) -> str:
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        if code is None:
            what = "still running"
        elif code < 0:
            what = f"killed by {signal.Signals(-code).name}"
        else:
            what = f"exit code {code}"
        self._err.seek(0)
        tail = self._err.read()[-2000:].decode("utf-8", "replace").strip().splitlines()[-3:]
        return what + (f" ({' | '.join(tail)})" if tail else "")


class LocalExecutor(StreamPool):
    scheme: ClassVar[str] = "local"

    def slot_names(self) -> list[tuple[str, str]]:
        n = self.options.workers or cores()
        return [(f"local-{i}", "localhost") for i in range(n)]

    def spawn(self, label: str, host: str) -> Channel:
        # Workers on this machine write result files into the store themselves: only a few hundred
        # bytes a task cross the pipe instead of every trade (70 KB a task on minute bars).
        root = str(self.options.data_root)
        return ProcessChannel(worker_argv(sys.executable, root, self.options.max_memory, results=root))

    def describe(self) -> str:
        return f"local://{self.options.workers or cores()}"

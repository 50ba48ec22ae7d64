"""The fork server's side: import and warm up once, then fork a worker for each request.

The coordinator's side, and the protocol on the control socket, are described in
``backtest.executors.forkserver``. The server is single-threaded (forking a process with threads
risks copying a held lock) and exits when its control socket closes, e.g. when the coordinator
dies. Each forked worker gets a session of its own and runs the worker's ``main`` with the
options it was sent.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

_MAX_MSG = 65536

WorkerMain = Callable[[list[str]], None]


def serve(fd: int, worker_main: WorkerMain, sandbox: bool = False) -> None:
    """Run the fork server on control socket ``fd`` (``python -m backtest.worker --fork-server``);
    each forked worker runs ``worker_main(argv)``.

    With ``sandbox`` the server is a child subreaper: what a sandboxed worker started and left
    behind when it was killed (a daemon that called ``setsid``) becomes the server's child, and is
    killed as soon as the worker's end is noticed; so is the worker's private folder removed."""
    sock = socket.socket(fileno=fd)
    workers: set[int] = set()
    if sandbox:
        from backtest.worker import sandbox as box

        box.become_subreaper()
    from backtest.trace import mark

    mark("fork server started")
    # what every worker needs, imported and warmed once, here
    import backtest.data  # noqa: F401
    import backtest.engine  # noqa: F401
    import backtest.strategy  # noqa: F401
    from backtest.worker.tuning import keep_freed_memory, warm_up

    keep_freed_memory()  # the forked workers inherit it

    try:
        warm_up(every=sandbox)
    except Exception:  # noqa: S110 - each worker meets (and reports) the same problem
        pass

    def reap() -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid not in workers:
                continue  # what a sandboxed worker left behind, killed below
            workers.discard(pid)
            if sandbox:
                box.kill_descendants(keep=workers)
                box.discard(pid)
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            try:
                sock.send(json.dumps({"exit": pid, "status": code}).encode())
            except OSError:
                pass

    # Workers' ends are handled in the loop, never in a signal handler: a handler runs between
    # any two bytecodes, also inside itself when a second SIGCHLD comes (two workers killed at
    # once), and a nested ``reap`` waited forever for a lock the outer one held (``tempfile``'s,
    # in ``box.discard``), so that no worker's end was reported again. SIGCHLD only writes to a
    # wakeup pipe (its handler does nothing; ignoring the signal instead would reap workers
    # unseen), which the loop waits on beside the control socket.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, _wake_only)
    # What is loaded now lives as long as the workers. Out of the collector's sight, a full
    # collection in a worker (long runs make some) neither walks its ~100 000 objects (~80 ms)
    # nor writes to their pages, which would copy ~26 MB of them into every worker.
    gc.freeze()
    gc.enable()  # off since ``worker.main``
    mark("fork server warm")
    while True:
        try:
            ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
            if wake_r in ready:
                _drain(wake_r)
                reap()
            if sock.fileno() not in ready:
                continue
            msg, fds, _flags, _addr = socket.recv_fds(sock, _MAX_MSG, 3)
        except OSError:
            break
        if not msg:
            break  # the coordinator closed the socket, or died
        try:
            argv = json.loads(msg)["argv"]
            pid = os.fork()
        except Exception as exc:
            for f in fds:
                os.close(f)
            sock.send(json.dumps({"error": str(exc)}).encode())
            continue
        if pid == 0:
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)
            _child(sock, fds, argv, worker_main)  # never returns
        workers.add(pid)
        for f in fds:
            os.close(f)
        sock.send(json.dumps({"pid": pid}).encode())
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def _wake_only(signum: int, frame: Any) -> None:
    """SIGCHLD's handler: nothing; the signal's wakeup byte has already woken the loop."""


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _child(sock: socket.socket, fds: list[int], argv: list[str], worker_main: WorkerMain) -> None:
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sock.close()
        os.setsid()  # a session of its own, as a worker started by Popen has
        for target, f in enumerate(fds):
            os.dup2(f, target)
        for f in fds:
            if f > 2:
                os.close(f)
        worker_main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(code)

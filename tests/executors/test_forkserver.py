"""Local workers forked from a warm fork server: real processes throughout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import processes_with_env, write_strategy

from backtest.executors.base import ExecutorOptions, TaskDone, task_outcomes
from backtest.executors.local import LocalExecutor
from backtest.run import RunRequest, prepare

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fork server is Linux-only")


def plan(root: Path, strategy: Path, params: list[str], **kw: Any) -> Any:
    return prepare(RunRequest(strategy=strategy, params=params, start="2020", end="2021", **kw), root)


def ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def wait_ready(ex: LocalExecutor, n: int, limit: float = 60.0) -> list[Any]:
    events: list[Any] = []
    deadline = time.monotonic() + limit
    while sum(s.state in ("idle", "busy") for s in ex._slots) < n:
        events.extend(task_outcomes(ex.poll(0.1)))
        assert time.monotonic() < deadline, "workers did not start"
    return events


def test_workers_are_forked_from_one_server_and_all_end_with_the_executor(root: Path, faulty: Path) -> None:
    prep = plan(root, faulty, ["n=3:8", "mode=slow"])
    ex = LocalExecutor(ExecutorOptions(data_root=root, workers=2))
    ex.start(prep.job.strategy)
    server = ex._server
    assert server is not None and server.alive()
    events = wait_ready(ex, 2)
    pids = [s.channel.pid for s in ex._slots if s.channel is not None]  # type: ignore[attr-defined]
    assert len(pids) == 2 and all(ppid(p) == server.proc.pid for p in pids)
    assert all(os.getsid(p) == p for p in pids)  # each in a session of its own, like a Popen'd worker
    ex.submit(prep.shards)
    while not ex.finished():
        events.extend(task_outcomes(ex.poll(0.1)))
    ex.close()
    done = [e.key for e in events if isinstance(e, TaskDone)]
    assert Counter(done) == Counter(t.key for t in prep.tasks)
    time.sleep(0.2)
    assert server.proc.poll() is not None
    assert not [p for p in [*pids, server.proc.pid] if Path(f"/proc/{p}").exists()]


SHOW_POOLS = """
class ShowPools(Strategy):
    n = 3

    def signals(self, bars):
        import gc, os
        pools = " ".join(f"{k}={os.environ.get(k)}" for k in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"))
        print(pools, f"gc={gc.isenabled()}")
        # a 24 MiB array, freed: glibc gives it back to the kernel unless told to keep freed memory
        statm = lambda: int(open("/proc/self/statm").read().split()[1])
        a = np.ones(3 << 20)
        before = statm()
        del a
        print(f"freed memory kept: {before - statm() < 1024}")  # pages
        return np.zeros(len(bars))
"""


@pytest.mark.parametrize("server", [True, False], ids=["forked", "started"])
def test_workers_keep_thread_pools_to_one_thread_unless_told_otherwise(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: bool
) -> None:
    """numpy's OpenBLAS starts a thread per core at import, which spins on cores the workers need
    (in the server, until its first fork); workers run one per core anyway. A count the user's
    environment sets is kept. The garbage collector, off while a worker (or the server) imports
    and warms up, is on again when shards run. Freed memory stays with the worker for its next
    arrays (``worker.keep_freed_memory``)."""
    from backtest.executors.base import ShardLog

    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")
    if not server:
        monkeypatch.setenv("BT_NO_FORK_SERVER", "1")
    prep = plan(root, write_strategy(tmp_path, SHOW_POOLS, "pools.py"), ["n=3:4"])
    ex = LocalExecutor(ExecutorOptions(data_root=root, workers=2))
    ex.start(prep.job.strategy)
    assert (ex._server is not None) == server
    events = wait_ready(ex, 2)
    ex.submit(prep.shards)
    while not ex.finished():
        events.extend(task_outcomes(ex.poll(0.1)))
    ex.close()
    logs = {line for e in events if isinstance(e, ShardLog) for line in e.text.splitlines()}
    assert logs == {"OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=3 gc=True", "freed memory kept: True"}


def test_without_the_server_workers_start_on_their_own(root: Path, faulty: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BT_NO_FORK_SERVER", "1")
    prep = plan(root, faulty, ["n=3:6"])
    ex = LocalExecutor(ExecutorOptions(data_root=root, workers=2))
    ex.start(prep.job.strategy)
    assert ex._server is None
    events = wait_ready(ex, 2)
    assert all(ppid(s.channel.pid) == os.getpid() for s in ex._slots)  # type: ignore[union-attr, attr-defined]
    ex.submit(prep.shards)
    while not ex.finished():
        events.extend(task_outcomes(ex.poll(0.1)))
    ex.close()
    assert len([e for e in events if isinstance(e, TaskDone)]) == len(prep.tasks)


def test_a_dead_server_means_workers_start_the_ordinary_way(root: Path, faulty: Path) -> None:
    """The server is killed, then a worker: its replacement is started by Popen, nothing is lost."""
    prep = plan(root, faulty, ["n=3:8", "mode=slow"])
    ex = LocalExecutor(ExecutorOptions(data_root=root, workers=2))
    ex.start(prep.job.strategy)
    events = wait_ready(ex, 2)
    assert ex._server is not None
    os.kill(ex._server.proc.pid, signal.SIGKILL)
    ex._server.proc.wait()
    ex.submit(prep.shards)
    killed = None
    while not ex.finished():
        events.extend(task_outcomes(ex.poll(0.1)))
        busy = [s for s in ex._slots if s.state == "busy" and s.channel is not None]
        if killed is None and busy and any(isinstance(e, TaskDone) for e in events):
            killed = busy[0].channel.pid  # type: ignore[union-attr, attr-defined]
            os.kill(killed, signal.SIGKILL)
    replacements = [s.channel.pid for s in ex._slots if s.channel is not None]  # type: ignore[attr-defined]
    ex.close()
    assert killed is not None and killed not in replacements
    assert any(ppid_or_none(p) in (os.getpid(), None) for p in replacements)
    assert Counter(e.key for e in events if isinstance(e, TaskDone)) == Counter(t.key for t in prep.tasks)


def ppid_or_none(pid: int) -> int | None:
    try:
        return ppid(pid)
    except OSError:
        return None


def test_bt_run_force_with_bad_input_leaves_no_fork_server(root: Path, faulty: Path) -> None:
    mark = f"bad-input-{os.getpid()}-{time.monotonic_ns()}"  # this command's processes, not another test's
    res = subprocess.run([sys.executable, "-m", "backtest", "--data", str(root), "run", str(faulty),
                          "--param", "nope=1", "--force"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "BT_TEST_MARK": mark, "BT_SANDBOX_KEEP": "BT_TEST_MARK"})
    assert res.returncode == 2 and "nope" in res.stderr
    deadline = time.monotonic() + 5
    while processes_with_env("BT_TEST_MARK", mark):  # its fork server (forked or started) is gone
        assert time.monotonic() < deadline, "a fork server outlived bt run with bad input"
        time.sleep(0.05)


@pytest.mark.parametrize(("args", "expected"), [
    (["run", "{s}", "--force"], [True]),
    (["run", "{s}", "--force", "--sandbox", "off"], [False]),
    (["run", "{s}", "--force", "--executor=local://3"], [True]),
    (["run", "{s}", "--force", "-w", "2", "--accept-new-hosts"], [True]),
    (["run", "{s}"], []),  # a rerun may have nothing to compute: no server before the plan
    (["run", "{s}", "--force", "--dry-run"], []),
    (["run", "{s}", "--force", "--hosts", "farm.txt"], []),
    (["run", "{s}", "--force", "--executor", "ssh://a"], []),
    (["run", "{s}", "--force", "--executor", "inline://"], []),
    (["run", "{s}", "--force", "--executor", "local://x"], []),  # bad options: planning says why
    (["run", "{s}", "--force", "--executor", "local://", "--hosts", "farm.txt"], []),
    (["run", "--help", "--force"], []),
    (["report", "x", "--force"], []),
])
def test_bt_run_preloads_its_server_only_for_forced_local_runs(root: Path, tmp_path: Path, args: list[str],
                                                              expected: list[bool],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line, once parsed, decides: ``bt run --force`` on this machine starts the
    workers' server before it plans (for the sandbox or not, as the run asks)."""
    from helpers import bt

    from backtest.executors import forkserver

    started: list[bool] = []
    monkeypatch.setattr(forkserver, "preload", lambda sandbox=True: started.append(sandbox))
    missing = tmp_path / "missing.py"  # the run stops at planning: no strategy
    bt("--data", root, *(a.format(s=missing) for a in args))
    assert started == expected


@pytest.mark.parametrize("sandbox", [False, True])
def test_a_preloaded_server_is_a_fork_only_without_the_sandbox(tmp_path: Path, sandbox: bool) -> None:
    """``preload`` from a single-threaded process forks the server from it instead of starting an
    interpreter, for workers without the sandbox; it forks workers like the Popen'd one. For
    sandboxed workers it starts a new interpreter with the sandbox's environment: a fork would have
    whatever this process read (a secret in an option's environment variable, say)."""
    script = tmp_path / "preload.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, sys, tempfile
        from backtest.executors import forkserver
        forkserver.preload(sandbox={sandbox})
        assert forkserver.adopt(sandbox={not sandbox}) is None  # a server of the other mode is not used
        forkserver.preload(sandbox={sandbox})
        server = forkserver.adopt(sandbox={sandbox})
        mine = open("/proc/self/cmdline", "rb").read()
        theirs = open(f"/proc/{{server.proc.pid}}/cmdline", "rb").read()
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err = tempfile.TemporaryFile()
        pid = server.fork([], in_r, out_w, err.fileno())
        os.close(in_r)
        os.close(out_w)
        from backtest.worker.protocol import read_frame
        hello = read_frame(os.fdopen(out_r, "rb"))[0]  # the server is long past its start now
        secret_seen = b"BT_TEST_SECRET_TOKEN=" in open(f"/proc/{{server.proc.pid}}/environ", "rb").read()
        parent = int(open(f"/proc/{{pid}}/stat").read().rsplit(")", 1)[1].split()[1])
        os.close(in_w)  # the worker's input ends: it exits
        status = server.wait(pid, 30)
        server.close()
        print(json.dumps({{"kind": type(server.proc).__name__, "same_cmdline": mine == theirs,
                          "server": server.proc.pid, "me": os.getpid(), "parent": parent,
                          "hello": hello, "pid": pid, "status": status, "server_exit": server.proc.returncode,
                          "secret_seen": secret_seen}}))
    """))
    env = {k: v for k, v in os.environ.items() if k != "BT_NO_FORK_SERVER"}
    env["BT_TEST_SECRET_TOKEN"] = "s3cr3t"
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if sandbox:  # `python -m backtest.worker --fork-server FD --sandbox`, without the secret
        assert out["kind"] == "Popen" and not out["same_cmdline"] and not out["secret_seen"]
    else:  # a fork of the script
        assert out["kind"] == "_Forked" and out["same_cmdline"] and out["secret_seen"]
    assert out["hello"]["t"] == "hello" and out["hello"]["pid"] == out["pid"] and out["parent"] == out["server"]
    assert out["status"] == 0 and out["server_exit"] is not None



SLOW_END = """
import runpy, sys, threading, time
import backtest.worker.sandbox as box

lock, discard = threading.Lock(), box.discard

def slow_discard(pid, base=None):
    with lock:  # like tempfile's lock, taken the first time the server asks for its temp folder
        time.sleep(0.3)
        discard(pid, base)

box.discard = slow_discard
sys.argv = ["backtest.worker", *sys.argv[3:]]
runpy.run_module("backtest.worker", run_name="__main__")
"""


def test_a_worker_ending_while_the_server_handles_another_end_is_reported(root: Path, tmp_path: Path) -> None:
    """The server handled each worker's end in its SIGCHLD handler, which a second worker's SIGCHLD
    re-entered (a handler runs between any two bytecodes, inside itself too); the nested call then
    waited forever for a lock the outer one held (tempfile's, the first time the server looks up its
    temp folder), no end was reported again, and closing a run waited 5 s a worker (seen under
    load). Here the server is the real one, started through a wrapper that makes the end of a
    sandboxed worker slow and locked, so that the second worker surely ends meanwhile."""
    from backtest.executors.forkserver import ForkServer
    from backtest.executors.local import worker_options

    wrapper = tmp_path / "slow_end.py"
    wrapper.write_text(SLOW_END)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} {wrapper} "$@"\n')
    python.chmod(0o755)
    server = ForkServer(str(python), sandbox=True)
    argv = worker_options(str(root), None, results=str(root), sandbox=True, share=2)
    fds: list[int] = []
    try:
        pids = []
        for _ in range(2):
            in_r, in_w = os.pipe()
            out_r, out_w = os.pipe()
            with open(os.devnull, "wb") as err:
                pids.append(server.fork(argv, in_r, out_w, err.fileno(), timeout=120))
            os.close(in_r)
            os.close(out_w)
            fds += [in_w, out_r]
        os.kill(pids[0], signal.SIGKILL)
        time.sleep(0.1)  # the server is now handling the first end, for 0.3 s
        os.kill(pids[1], signal.SIGKILL)
        assert [server.wait(pid, 5) for pid in pids] == [-signal.SIGKILL] * 2, "a worker's end was never reported"
    finally:
        for f in fds:
            os.close(f)
        server.close()

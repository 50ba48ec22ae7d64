"""Hosts that fail under a running SSH executor: killed, frozen, cut off, silent, slow, refused
(wrong Python, other environment, changed host key), damaged transfers, and every host gone.

Each test gets three fresh hosts (``ready_farm``). A run must still report every task exactly
once, a lost host must be noticed within about ten seconds, and the coordinator's loop must never
stall on a host (``longest_poll``).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from netns_farm import Farm, Host
from sshhelpers import busy_on, done_once, executor, farm_executor, host_of, line, notes, run

from backtest.executors.base import ExecutorOptions, ShardFinished, ShardLog, TaskDone, WorkerNote
from backtest.executors.inline import InlineExecutor
from backtest.executors.ssh import environment
from backtest.run import RunRequest, execute, prepare

pytestmark = pytest.mark.ssh

MAX_POLL = 1.5  # seconds the coordinator's loop may go without coming back


def slow_job(root: Path, faulty: Path, params: str = "n=3:12") -> Any:
    """30 tasks of ~0.4 s, one a shard: long enough to break a host in the middle."""
    return prepare(RunRequest(strategy=faulty, params=[params, "mode=slow"], start="2020", end="2021"), root)


class Fault:
    """Breaks ``victim`` once it is busy and a result is in; times how long until it is noticed."""

    def __init__(self, farm: Farm, victim: Host, action: str) -> None:
        self.farm, self.victim, self.action = farm, victim, action
        self.at: float | None = None
        self.noticed: float | None = None
        self.seen = 0

    def __call__(self, ex: Any, events: list[Any]) -> None:
        if self.at is None:
            if busy_on(ex, self.victim) and any(isinstance(e, TaskDone) for e in events):
                getattr(self.farm, self.action)(self.victim)
                self.at = time.monotonic()
                self.seen = len(events)
            return
        if self.noticed is None:
            name = host_of(ex, self.victim).spec.name
            if any(isinstance(e, WorkerNote) and e.worker.startswith(name) for e in events[self.seen:]):
                self.noticed = time.monotonic()

    @property
    def delay(self) -> float:
        assert self.at is not None and self.noticed is not None, "the fault was not noticed"
        return self.noticed - self.at


def check_run(ex: Any, events: list[Any], prep: Any) -> None:
    done_once(events, prep)
    assert {e.shard for e in events if isinstance(e, ShardFinished)} == {s.id for s in prep.shards}
    assert ex.longest_poll < MAX_POLL, f"the loop stalled for {ex.longest_poll:.1f} s"


def test_host_killed_mid_run(ready_farm: Farm, farm_python: str, root: Path, faulty: Path) -> None:
    prep = slow_job(root, faulty)
    ex = farm_executor(ready_farm, root, farm_python)
    fault = Fault(ready_farm, ready_farm.hosts[1], "kill")
    events = run(ex, prep, fault)
    check_run(ex, events, prep)
    print(f"killed host noticed after {fault.delay:.2f} s")
    assert fault.delay < 3
    victim = host_of(ex, ready_farm.hosts[1])
    assert victim.state in ("down", "set-aside", "connecting")
    assert any("host lost" in n for n in notes(events))
    # its in-flight shard was rerun on another host, as an extra attempt
    rerun = [e for e in events if isinstance(e, TaskDone) and not e.worker.startswith(victim.name)]
    assert rerun


def test_host_frozen_mid_run_is_caught_by_heartbeats(ready_farm: Farm, farm_python: str, root: Path,
                                                     faulty: Path) -> None:
    prep = slow_job(root, faulty)
    ex = farm_executor(ready_farm, root, farm_python)
    victim = ready_farm.hosts[1]
    fault = Fault(ready_farm, victim, "freeze")
    thawed: list[float] = []

    def during(ex: Any, events: list[Any]) -> None:
        fault(ex, events)
        if fault.noticed is not None and not thawed:
            ready_farm.thaw(victim)  # the lost host comes back: it may answer, nothing is counted twice
            thawed.append(time.monotonic())

    try:
        events = run(ex, prep, during)
    finally:
        ready_farm.thaw(victim)
    check_run(ex, events, prep)
    print(f"frozen host noticed after {fault.delay:.2f} s")
    assert 7 < fault.delay < 12.5  # the 10 s heartbeat timeout: TCP still works to a frozen host
    assert any("stopped answering" in n for n in notes(events))


def test_host_cut_off_mid_run(ready_farm: Farm, farm_python: str, root: Path, faulty: Path) -> None:
    prep = slow_job(root, faulty)
    ex = farm_executor(ready_farm, root, farm_python)
    victim = ready_farm.hosts[1]
    fault = Fault(ready_farm, victim, "cut")
    try:
        events = run(ex, prep, fault)
    finally:
        ready_farm.mend(victim)
    check_run(ex, events, prep)
    print(f"cut-off host noticed after {fault.delay:.2f} s")
    assert fault.delay < 12.5
    name = host_of(ex, victim).name
    said = [n for n in notes(events) if n.startswith(name)]
    # the pool gives the worker up (heartbeats, or the connection's TCP_USER_TIMEOUT), then the
    # host itself is dropped once a ping fails, unless the run was over by then
    assert any("stopped answering" in n or "connection to its host was lost" in n for n in said), said


def test_a_host_that_never_answers_holds_nothing_up(ready_farm: Farm, farm_python: str, root: Path,
                                                    faulty: Path) -> None:
    prep = slow_job(root, faulty, "n=3:8")  # ~7 s on one worker: the silent host times out meanwhile
    silent = f"nobody@{ready_farm.silent_address()} python={farm_python}"
    ex = executor(ready_farm, root, [line(ready_farm, ready_farm.hosts[0], farm_python), silent])
    started = time.monotonic()
    first: list[float] = []

    def during(ex: Any, events: list[Any]) -> None:
        if not first and any(isinstance(e, TaskDone) for e in events):
            first.append(time.monotonic() - started)

    events = run(ex, prep, during)
    check_run(ex, events, prep)
    assert first[0] < 10
    lost = ex.hosts[1]
    assert lost.state in ("down", "connecting", "set-aside")
    assert any("no answer" in n for n in notes(events))
    assert all(s.shards_done == 0 for s in lost.slots)


def test_every_host_gone_ends_the_run_interrupted_and_a_rerun_finishes_it(
    ready_farm: Farm, farm_python: str, root: Path, faulty: Path
) -> None:
    req = RunRequest(strategy=faulty, params=["n=3:12", "mode=slow"], start="2020", end="2021")
    prep = prepare(req, root)
    ex = farm_executor(ready_farm, root, farm_python)
    ex.start(prep.job.strategy)
    killed: list[int] = []

    def on_progress(p: Any) -> None:
        if not killed and p.computed >= 3:
            for host in ready_farm.hosts:
                ready_farm.kill(host)
            killed.append(p.computed)

    summary = execute(prep, on_progress, ex)
    assert summary.status == "interrupted" and summary.exit_code == 130
    assert summary.message.startswith("every host failed: ")
    assert all(h.state == "set-aside" for h in ex.hosts)
    assert 3 <= summary.computed < len(prep.tasks)

    for host in ready_farm.hosts:  # the hosts come back: the same job computes only what is missing
        ready_farm.start_sshd(host)
    again = prepare(req, root)
    assert len(again.cached) == summary.computed
    ex = farm_executor(ready_farm, root, farm_python)
    ex.start(again.job.strategy)
    second = execute(again, executor=ex)
    assert second.status == "done" and second.computed == len(prep.tasks) - summary.computed


def test_wrong_python_and_other_environment_are_set_aside_with_the_difference(
    ready_farm: Farm, farm_python: str, root: Path, faulty: Path
) -> None:
    farm = ready_farm
    odd = farm.hosts[2]  # bt's environment there is of another numpy: refused, difference shown
    cache = odd.home / ".cache" / "bt"
    shutil.rmtree(cache)
    env_dir = cache / "envs" / environment.env_key()
    code_dir = cache / "code" / environment.code_key()[:24]
    fp = dict(environment.fingerprint())
    fp.pop("bt-farm")
    fp["numpy"] = "1.26.4"
    for path, marker in ((env_dir, {"fingerprint": fp}), (code_dir, {"version": environment.bt_version()})):
        (path / "bin").mkdir(parents=True)
        (path / ".bt-ready").write_text(json.dumps(marker))
    (env_dir / "bin" / "python").symlink_to(farm_python)
    shutil.chown(cache, odd.user)

    prep = prepare(RunRequest(strategy=faulty, params=["n=3:6"], start="2020", end="2021"), root)
    lines = [line(farm, farm.hosts[0], farm_python), line(farm, farm.hosts[1], "/usr/bin/false"),
             line(farm, odd, farm_python)]
    ex = executor(farm, root, lines)
    events = run(ex, prep)
    check_run(ex, events, prep)
    said = "\n".join(notes(events))
    assert [h.state for h in ex.hosts] == ["ready", "set-aside", "set-aside"]
    assert "set aside: python '/usr/bin/false' does not work on the host" in said
    numpy = environment.fingerprint()["numpy"]
    assert f"set aside: environment differs from this one: numpy {numpy} here, 1.26.4 there" in said
    assert all(s.state == "set-aside" for h in ex.hosts[1:] for s in h.slots)
    assert [sum(s.failures for s in h.slots) for h in ex.hosts] == [0, 1, 1]  # the display's column
    statuses = {w.host: w.state for w in ex.status()}
    assert statuses[ex.hosts[1].name] == statuses[ex.hosts[2].name] == "set-aside"


def test_a_changed_host_key_is_refused(ready_farm: Farm, farm_python: str, root: Path, faulty: Path,
                                       tmp_path: Path) -> None:
    import subprocess

    farm = ready_farm
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, key = Path(str(other) + ".pub").read_text().split()[:2]
    victim = farm.hosts[0]
    text = farm.known_hosts.read_text().splitlines()
    farm.known_hosts.write_text("\n".join(
        f"{victim.address} {kind} {key}" if ln.startswith(victim.address + " ") else ln for ln in text) + "\n")
    prep = prepare(RunRequest(strategy=faulty, params=["n=3:6"], start="2020", end="2021"), root)
    ex = farm_executor(farm, root, farm_python)
    events = run(ex, prep)
    check_run(ex, events, prep)
    assert ex.hosts[0].state == "set-aside"
    said = [n for n in notes(events) if n.startswith(ex.hosts[0].name)]
    assert len(said) == 1 and "set aside: host key CHANGED" in said[0] and "refusing to connect" in said[0]


def test_a_damaged_transfer_is_detected_and_sent_again(ready_farm: Farm, farm_python: str, root: Path,
                                                       faulty: Path) -> None:
    prep = prepare(RunRequest(strategy=faulty, params=["n=3:6"], start="2020", end="2021"), root)
    reference = run(InlineExecutor(ExecutorOptions(data_root=root)), prep)  # type: ignore[arg-type]
    expected = {e.key: e.body for e in reference if isinstance(e, TaskDone)}
    ex = farm_executor(ready_farm, root, farm_python)
    damaged: set[tuple[str, str]] = set()

    def flip_a_bit_the_first_time(sha: str, attempt: int, chunk: bytes) -> bytes:
        if attempt == 1 and chunk:
            damaged.add((sha, "x"))
            return bytes([chunk[0] ^ 0x01]) + chunk[1:]
        return chunk

    ex.tamper = flip_a_bit_the_first_time
    events = run(ex, prep)
    check_run(ex, events, prep)
    assert done_once(events, prep) == expected  # the worker's data-hash check passed on every copy
    resent = {sha for h in ex.hosts for r in h.objects.reports for sha in r.resent}
    assert resent and {sha for sha, _ in damaged} == resent
    assert any("arrived damaged and were sent again" in n for n in notes(events))


def test_a_slow_host_joins_a_job_that_is_already_running(ready_farm: Farm, farm_python: str, root: Path,
                                                          faulty: Path) -> None:
    """Host setup happens in the background: the fast host computes while the slow one (each of its
    commands starts 5 s late) is still being set up, and the slow one joins when it is ready."""
    farm = ready_farm
    slow_python = farm.dir / "slow-python"
    slow_python.write_text(f'#!/bin/sh\nsleep 5\nexec {farm_python} "$@"\n')
    slow_python.chmod(0o755)
    prep = slow_job(root, faulty, "n=3:14")
    ex = executor(farm, root, [line(farm, farm.hosts[0], farm_python),
                               line(farm, farm.hosts[1], str(slow_python))])
    order: list[str] = []

    def during(ex: Any, events: list[Any]) -> None:
        if not order and any(isinstance(e, TaskDone) for e in events):
            order.append("first result")
        if len(order) == 1 and ex.hosts[1].state == "ready":
            order.append("slow host ready")

    events = run(ex, prep, during)
    check_run(ex, events, prep)
    assert order == ["first result", "slow host ready"]
    assert sum(s.shards_done for s in ex.hosts[1].slots) > 0, notes(events)


LOUD = '''
import sys
import numpy as np
from backtest.strategy import Strategy


class Loud(Strategy):
    n = 1

    def signals(self, bars):
        sys.stdout.write("x" * 8_000_000)  # captured, and sent to the coordinator as an 8 MB log frame
        return np.zeros(len(bars.close))
'''


def test_a_cut_off_hosts_workers_exit_on_time_even_while_their_output_is_blocked(
        ready_farm: Farm, farm_python: str, root: Path, tmp_path: Path) -> None:
    """Cut off, a host's sshd cannot send, so a worker writing its output blocks (here: megabytes
    of a strategy's prints); it must still exit once its coordinator has been silent for
    COORDINATOR_TIMEOUT, not when TCP gives up minutes later."""
    from sshhelpers import workers_on

    from backtest.executors.ssh.executor import COORDINATOR_TIMEOUT

    strategy = tmp_path / "loud.py"
    strategy.write_text(LOUD)
    prep = prepare(RunRequest(strategy=strategy, params=["n=1:20"], start="2020", end="2021"), root)
    victim = ready_farm.hosts[0]
    ex = executor(ready_farm, root, [line(ready_farm, victim, farm_python)])
    ex.start(prep.job.strategy)
    ex.submit(prep.shards)
    try:
        deadline = time.monotonic() + 60
        logs = 0
        while logs < 2:  # its output flows, and it has more shards to run and print
            logs += sum(isinstance(e, ShardLog) for e in ex.poll(0.1))
            assert time.monotonic() < deadline, "the host sent no output"
        ready_farm.cut(victim)
        cut_at = time.monotonic()
        while workers_on(victim) and time.monotonic() - cut_at < COORDINATOR_TIMEOUT + 20:
            ex.poll(0.2)
        left = workers_on(victim)
        assert left == [], f"{len(left)} still running {time.monotonic() - cut_at:.0f} s after the cut: {[p[-80:] for p in left]}"
        assert time.monotonic() - cut_at > COORDINATOR_TIMEOUT - 5  # they waited for the timeout, no less
    finally:
        ex.close(cancel=True)
        ready_farm.mend(victim)

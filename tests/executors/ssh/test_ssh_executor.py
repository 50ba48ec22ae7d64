"""The SSH executor on real sshd hosts: the executor contract, byte-identical results, data shipped
once per host, cancel without remote orphans, and many workers over sshd's session limit."""

from __future__ import annotations

import hashlib
import pwd
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from contract import WorkerProcessContract
from netns_farm import Farm
from sshhelpers import (
    busy_on,
    done_once,
    executor,
    farm_executor,
    line,
    notes,
    run,
    wait_no_workers,
    workers_on,
)

from backtest.executors.base import Executor, TaskDone
from backtest.run import RunRequest, execute, prepare
from backtest.store.results import ResultStore

pytestmark = pytest.mark.ssh


class TestSSH(WorkerProcessContract):
    """The same contract tests as the local executor, on three hosts with one worker each."""

    __test__ = True

    @pytest.fixture(autouse=True)
    def _farm(self, ready_farm: Farm, farm_python: str) -> None:
        self.farm = ready_farm
        self.python = farm_python

    def make(self, root: Path, **options: Any) -> Executor:
        return farm_executor(self.farm, root, self.python, **options)

    def test_timeout_kills_and_retries_then_fails_with_every_attempt(self, root: Path, faulty: Path) -> None:
        super().test_timeout_kills_and_retries_then_fails_with_every_attempt(root, faulty)
        assert wait_no_workers(self.farm.hosts) == []  # the looping workers were killed on the hosts

    def test_cancel_kills_every_remote_worker(self, root: Path, faulty: Path) -> None:
        prep = self.plan(root, faulty, ["n=3:8", "mode=slow"])
        ex = farm_executor(self.farm, root, self.python)
        ex.start(prep.job.strategy)
        ex.submit(prep.shards)
        deadline = time.monotonic() + 60
        while not any(isinstance(e, TaskDone) for e in ex.poll(0.1)):
            assert time.monotonic() < deadline
        assert all(workers_on(h) for h in self.farm.hosts)
        start = time.monotonic()
        ex.close(cancel=True)
        assert time.monotonic() - start < 5
        assert wait_no_workers(self.farm.hosts, 5) == []
        assert not [p for h in self.farm.hosts for p in (h.home / ".cache" / "bt" / "procs").glob("*")]


def local_results(root: Path, req: RunRequest) -> dict[str, bytes]:
    execute(prepare(RunRequest(**{**req.__dict__, "executor": "local://2"}), root))
    store = ResultStore(root)
    return {k: store.read_bytes(k) for k in store.keys()}


def test_three_hosts_give_the_bytes_of_a_local_run_and_ship_data_once(
    ready_farm: Farm, farm_python: str, root: Path, sma_path: Path, tmp_path: Path
) -> None:
    req = RunRequest(strategy=sma_path, start="2020", end="2021", params=["fast=5,10,15", "slow=20,40"])
    other = tmp_path / "local"
    shutil.copytree(root, other)
    expected = local_results(other, req)
    assert len(expected) == 18

    farm = ready_farm
    lines = [line(farm, farm.hosts[0], farm_python, cores=2)] + [line(farm, h, farm_python) for h in farm.hosts[1:]]
    prep = prepare(req, root)
    ex = executor(farm, root, lines)
    ex.start(prep.job.strategy)
    summary = execute(prep, executor=ex)
    assert summary.status == "done" and summary.computed == 18
    store = ResultStore(root)
    assert {k: store.read_bytes(k) for k in store.keys()} == expected

    # each host holds the partitions its shards read, by the sha256 of their bytes, sent once
    sent_first = {h.spec.host: [sha for r in h.objects.reports for sha in r.sent] for h in ex.hosts}
    assert sum(s.shards_done for s in ex._slots) == len(prep.shards)
    for host in farm.hosts:
        sent = sent_first[host.address]
        assert len(sent) == len(set(sent)), "a partition was sent twice to one host"
        for sha in sent:
            obj = host.home / ".cache" / "bt" / "objects" / sha[:2] / sha
            assert hashlib.sha256(obj.read_bytes()).hexdigest() == sha

    # a second run on the same hosts sends no host anything it already has
    prep = prepare(RunRequest(**{**req.__dict__, "force": True}), root)
    ex = executor(farm, root, lines)
    events = run(ex, prep)
    assert done_once(events, prep) == expected
    for h in ex.hosts:
        again = [sha for r in h.objects.reports for sha in r.sent]
        assert not set(again) & set(sent_first[h.spec.host]), notes(events)
        assert len(again) == len(set(again))


def test_more_workers_than_one_connection_may_carry(prebuilt_env: Any, farm_python: str, root: Path,
                                                     faulty: Path) -> None:
    """sshd allows MaxSessions channels per connection: a host with more workers gets more
    connections (here MaxSessions 4 and 2 workers a connection: 5 workers need 3 connections)."""
    from farmenv import provision
    from sshhelpers import start_farm

    import backtest.executors.ssh.executor as ssh

    with start_farm(1, max_sessions=4) as farm:
        provision(farm.hosts[0], *prebuilt_env)
        prep = prepare(RunRequest(strategy=faulty, params=["n=3:12"], start="2020", end="2021"), root)
        ex = executor(farm, root, [line(farm, farm.hosts[0], farm_python, cores=5)])
        old = ssh.WORKERS_PER_CONNECTION
        ssh.WORKERS_PER_CONNECTION = 2
        try:
            seen: list[int] = []
            events = run(ex, prep, lambda ex, _: seen.append(len(ex.hosts[0].conns)))
        finally:
            ssh.WORKERS_PER_CONNECTION = old
        done_once(events, prep)
        assert max(seen) == 3
        assert sum(s.state != "set-aside" for s in ex._slots) == 5
        assert not [n for n in notes(events) if "could not start" in n], notes(events)


def test_a_lost_workers_late_frames_are_dropped(ready_farm: Farm, farm_python: str, root: Path,
                                                 faulty: Path) -> None:
    """A result that arrives from a worker given up for lost is not reported (the contract)."""
    prep = prepare(RunRequest(strategy=faulty, params=["n=3:4"], start="2020", end="2021",
                              symbols=["AAA"]), root)
    ex = farm_executor(ready_farm, root, farm_python)
    stale: list[int] = []

    def during(ex: Any, events: list[Any]) -> None:
        if not stale:
            busy = [s for s in ex._slots if s.state == "busy"]
            if busy:
                stale.append(busy[0].gen)
                ex._lose(busy[0], "given up for lost by the test")
                key = prep.tasks[0].key
                ex._q.put((stale[0], {"t": "result", "shard": prep.shards[0].id, "key": key}, b"late"))

    events = run(ex, prep, during)
    assert stale
    got = done_once(events, prep)
    assert b"late" not in got.values()


def test_workers_start_under_every_common_login_shell(prebuilt_env: Any, farm_python: str, root: Path,
                                                       sma_path: Path, faulty: Path, tmp_path: Path) -> None:
    """sshd runs the command through the user's login shell: bash and zsh exec it in place (the
    launcher is then already a session leader), sh forks it, fish reads another syntax. Every host
    computes, the bytes are a local run's, and cancelling leaves nothing behind on any of them."""
    from farmenv import provision
    from sshhelpers import start_farm

    req = RunRequest(strategy=sma_path, start="2020", end="2021", params=["fast=5,10", "slow=20,40"])
    other = tmp_path / "local"
    shutil.copytree(root, other)
    expected = local_results(other, req)

    with start_farm(4, shells=("bash", "sh", "zsh", "fish")) as farm:
        for host in farm.hosts:
            provision(host, *prebuilt_env)
        assert sorted(Path(pwd.getpwnam(h.user).pw_shell).name for h in farm.hosts) == ["bash", "fish", "sh", "zsh"]
        prep = prepare(RunRequest(**{**req.__dict__, "force": True}), root)
        events = run(farm_executor(farm, root, farm_python), prep)
        assert not [n for n in notes(events) if "could not start" in n or "set aside" in n], notes(events)
        assert done_once(events, prep) == expected

        # slow tasks (0.4 s each, ~14 s of work): every host, whatever its shell, gets shards
        prep = prepare(RunRequest(strategy=faulty, params=["n=3:14", "mode=slow"], start="2020", end="2021"), root)
        ex = farm_executor(farm, root, farm_python)
        done_once(run(ex, prep), prep)
        per_host = {h.spec.host: sum(s.shards_done for s in h.slots) for h in ex.hosts}
        assert all(per_host.values()), per_host

        # cancel while every host computes: the kill command (an sh script) works from every shell
        prep = prepare(RunRequest(strategy=faulty, params=["n=15:40", "mode=slow"], start="2020", end="2021"),
                       root)
        ex = farm_executor(farm, root, farm_python)
        ex.start(prep.job.strategy)
        ex.submit(prep.shards)
        deadline = time.monotonic() + 60
        while not all(busy_on(ex, h) and workers_on(h) for h in farm.hosts):
            ex.poll(0.1)
            assert time.monotonic() < deadline, "not every host got a shard"
        ex.close(cancel=True)
        assert wait_no_workers(farm.hosts, 10) == []

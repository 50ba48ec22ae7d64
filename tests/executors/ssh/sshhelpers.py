"""Helpers for the SSH executor tests: executors on a test farm, driving a run with a fault in it."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from netns_farm import Farm, Host, missing_requirements

from backtest.executors.base import ExecutorOptions, TaskDone, WorkerNote
from backtest.executors.ssh.connect import SSHSettings
from backtest.executors.ssh.executor import SSHExecutor
from backtest.executors.ssh.hostsfile import parse_hosts


def require_farm() -> None:
    reason = missing_requirements()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"ssh farm tests must run in CI: {reason}")
    pytest.skip(reason)


def start_farm(n: int, **kw: Any) -> Farm:
    require_farm()
    return Farm.start(n, **kw)


def line(farm: Farm, host: Host, python: str, cores: int = 1, **extra: Any) -> str:
    return host.line(key=farm.client_key, python=python, cores=cores, **extra)


def executor(farm: Farm, root: Path, lines: list[str], **options: Any) -> SSHExecutor:
    """An SSH executor on ``lines`` (hosts-file lines), trusting the farm's known_hosts."""
    specs = parse_hosts("\n".join(lines))
    ex = SSHExecutor(specs, ExecutorOptions(data_root=root, **options),
                     settings=SSHSettings(known_hosts=farm.known_hosts, connect_timeout=3))
    ex.backoff_first = 0.5
    return ex


def farm_executor(farm: Farm, root: Path, python: str, cores: int = 1, **options: Any) -> SSHExecutor:
    return executor(farm, root, [line(farm, h, python, cores) for h in farm.hosts], **options)


def run(ex: SSHExecutor, prep: Any, during: Callable[[SSHExecutor, list[Any]], None] | None = None,
        limit: float = 120.0) -> list[Any]:
    """Start, submit and poll to the end, calling ``during(ex, events)`` after every poll."""
    events: list[Any] = []
    deadline = time.monotonic() + limit
    with ex:
        ex.start(prep.job.strategy)
        ex.submit(prep.shards)
        last = time.monotonic()
        while not ex.finished():
            events.extend(ex.poll(0.1))
            now = time.monotonic()
            ex.longest_poll = max(getattr(ex, "longest_poll", 0.0), now - last)  # type: ignore[attr-defined]
            if during is not None:
                during(ex, events)
            last = time.monotonic()
            assert last < deadline, f"run did not finish; notes: {notes(events)}"
    return events


def notes(events: list[Any]) -> list[str]:
    return [f"{e.worker}: {e.message}" for e in events if isinstance(e, WorkerNote)]


def done_once(events: list[Any], prep: Any) -> dict[str, bytes]:
    """Every task reported done exactly once; returns key → result bytes."""
    done = [e for e in events if isinstance(e, TaskDone)]
    counts = Counter(e.key for e in done)
    assert counts == Counter(t.key for t in prep.tasks), f"not each task once: {counts.most_common(3)}"
    return {e.key: e.body for e in done}


def host_of(ex: SSHExecutor, host: Host) -> Any:
    return next(h for h in ex.hosts if h.spec.host == host.address)


def busy_on(ex: SSHExecutor, host: Host) -> bool:
    return any(s.state == "busy" for s in host_of(ex, host).slots)


def workers_on(host: Host) -> list[str]:
    return [p for p in host.user_processes() if "backtest.worker" in p]


def wait_no_workers(hosts: list[Host], seconds: float = 10.0) -> list[str]:
    deadline = time.monotonic() + seconds
    while True:
        left = [p for h in hosts for p in workers_on(h)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)

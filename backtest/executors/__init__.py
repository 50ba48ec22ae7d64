"""Executors, chosen by URL: ``local://N``, ``inline://``, ``ssh://h1,h2`` (or ``ssh://@FILE``,
what ``--hosts FILE`` means), ``dask://host:port`` (or ``dask://local``).

This module is the registry and the only place that knows each scheme's URL grammar: the runner
turns its options into a URL (``resolve``), checks it before anything is recorded (``parse_url``:
a bad hosts file names every bad line) and builds the executor (``from_url``). Parsing imports
nothing heavy; an executor's module, and an optional backend such as dask, is imported only when
that executor is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from backtest.errors import UsageError

if TYPE_CHECKING:  # this module stays light: `bt run --force` starts the fork server (below) from it first
    from pathlib import Path

    from backtest.executors.base import Executor, ExecutorOptions

#: scheme → (module, class) of its executor
REGISTRY: dict[str, tuple[str, str]] = {
    "local": ("backtest.executors.local", "LocalExecutor"),
    "inline": ("backtest.executors.inline", "InlineExecutor"),
    "ssh": ("backtest.executors.ssh.executor", "SSHExecutor"),
    "dask": ("backtest.executors.dask_", "DaskExecutor"),
}
SCHEMES = tuple(REGISTRY)

#: workers a remote executor is planned for before its hosts report their cores: shards are sized
#: for several workers and handed out as workers free up, so this only sets the shards' count.
REMOTE_PLANNED_WORKERS = 8


class Target(NamedTuple):
    """An executor URL, checked: its scheme, the part after ``://``, and how many workers the
    planner sizes shards for (``capacity``)."""

    url: str
    scheme: str
    rest: str
    capacity: int


#: schemes whose workers do not read this machine's data root
_OWN_DATA = {"ssh"}


def workers_read_here(url: str) -> bool:
    """Whether the workers of the executor ``url`` names (checked by ``parse_url``) read the bars
    through this machine's data root and bars cache (local, inline; Dask's workers see the same
    path): with bars on an object store, the coordinator fetches what they will read before they
    start. SSH hosts keep a cache of their own, which the executor fills (``executors.ssh.ship``)."""
    return url.partition("://")[0] not in _OWN_DATA


def cores() -> int:
    """This machine's cores available to bt (one local worker each by default)."""
    from backtest.worker.tuning import cores as usable

    return usable()


def _local(url: str, rest: str) -> int:
    if not rest:
        return cores()
    try:
        n = int(rest)
    except ValueError:
        n = 0
    if n < 1:
        raise UsageError(f'"{url}": the number of workers must be a whole number ≥ 1, e.g. local://4')
    return n


def _ssh(url: str, rest: str) -> int:
    from backtest.executors.ssh.hostsfile import parse_ssh_url, read_hosts_file
    from backtest.executors.ssh.ship import host_cache_limit

    if rest.startswith("@"):
        read_hosts_file(rest[1:])
    else:
        parse_ssh_url(url)
    host_cache_limit()  # a bad BT_HOST_CACHE_MB is one line here, before anything is recorded
    return REMOTE_PLANNED_WORKERS


_CHECKS: dict[str, Callable[[str, str], int]] = {
    "local": _local,
    "inline": lambda url, rest: 1,
    "ssh": _ssh,
    "dask": lambda url, rest: REMOTE_PLANNED_WORKERS,
}


def parse_url(url: str) -> Target:
    """Check an executor URL (a bad one raises ``UsageError`` saying how to fix it)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise UsageError(f'executor "{url}" is not a URL; use one of: ' + ", ".join(f"{s}://" for s in SCHEMES))
    check = _CHECKS.get(scheme)
    if check is None:
        raise UsageError(f'unknown executor scheme "{scheme}://"; known: ' + ", ".join(f"{s}://" for s in SCHEMES))
    return Target(url, scheme, rest, check(url, rest))


def resolve(executor: str | None, hosts: Path | None, workers: int | None) -> str:
    """The executor URL that ``bt run``'s ``--executor``, ``--hosts`` and ``--workers`` name."""
    if hosts and executor:
        raise UsageError("give either --hosts or --executor, not both")
    if workers is not None and (hosts or (executor and not executor.startswith("local://"))):
        raise UsageError("--workers is for local runs; on hosts, set cores=N on a host's line of the hosts file")
    if workers is not None and workers < 1:
        raise UsageError("--workers must be at least 1")
    if hosts:
        return f"ssh://@{hosts}"
    if executor:
        return executor
    return f"local://{workers}" if workers is not None else "local://"


def preload(url: str, sandbox: bool) -> None:
    """When ``url`` names this machine's executor, start its workers' fork server now
    (``forkserver.preload``), for a run that is sure to have work (``bt run --force``): the
    local executor adopts it; ``discard_preloaded`` stops it if the run needs none after all."""
    if url.partition("://")[0] != "local":
        return
    try:
        parse_url(url)
    except UsageError:
        return  # planning reports it
    from backtest.executors import forkserver

    forkserver.preload(sandbox)


def discard_preloaded() -> None:
    """Stop a local fork server that ``bt run --force`` started before planning (``preload``),
    when the run turns out to need none: bad input, or nothing to compute."""
    import sys

    forkserver = sys.modules.get("backtest.executors.forkserver")
    if forkserver is not None:
        forkserver.discard()


def from_url(url: str, options: ExecutorOptions) -> Executor:
    """Build (not start) the executor a URL names."""
    from dataclasses import replace
    from importlib import import_module

    from backtest.errors import ExecutorError

    target = parse_url(url)
    if target.scheme == "local" and target.rest:
        options = replace(options, workers=target.capacity)
    module, name = REGISTRY[target.scheme]
    try:
        cls = getattr(import_module(module), name)
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ExecutorError(f"the {target.scheme}:// executor is unavailable: {exc}") from exc
    executor: Executor = cls.from_url(target.rest, options)
    return executor

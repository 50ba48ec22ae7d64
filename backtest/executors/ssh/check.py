"""``check_hosts``: reach every host of a farm in parallel and say what each one can do.

Collects one ``HostReport`` per host (every outcome, never the first failure only).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from backtest import paths
from backtest.errors import BtError
from backtest.executors.ssh.hostsfile import HostSpec


@dataclass(frozen=True)
class HostReport:
    spec: HostSpec
    reachable: bool
    cores: int | None = None
    python: str | None = None
    environment: str = "-"  # "match", "installed", "not installed (wheels)", "not installed (index)"
    latency_ms: float | None = None
    error: str | None = None
    disk: int | None = None  # bytes bt keeps on the host (~/.cache/bt)
    trial: str = "-"  # a task run on the host: "ok (N s)", or "-" when not tried
    sandbox: str | None = None  # what the sandbox of the trial's worker had (``Protections.describe``)
    data: str = "-"  # with the bars on an object store: "fetched by the host", or "shipped (why)"

    @property
    def ok(self) -> bool:
        return self.reachable and self.error is None


def check_host(spec: HostSpec, settings: object = None, *, install: bool = False) -> HostReport:
    import backtest.executors.ssh.bootstrap as boot
    from backtest.executors.ssh.connect import SSHSettings, connect, ping

    ssh = settings if isinstance(settings, SSHSettings) else SSHSettings()
    try:
        conn = connect(spec, ssh)
    except BtError as exc:
        return HostReport(spec, reachable=False, error=_strip_name(spec, str(exc)))
    try:
        latency = statistics.median(ping(conn) for _ in range(3)) * 1000
        try:
            found = boot.probe(conn, spec)
        except BtError as exc:
            message = _strip_name(spec, str(exc))
            state = "differs" if "environment differs" in message or "bt needs" in message else "-"
            return HostReport(spec, True, latency_ms=latency, environment=state, error=message)
        cores = spec.cores or found.cores
        disk = found.disk
        if install:
            try:
                env = boot.bootstrap(conn, spec)
            except BtError as exc:
                return HostReport(
                    spec, True, cores, found.version_text, "differs", latency, _strip_name(spec, str(exc))
                )
            state = "installed, match" if env.installed else "match"
            return HostReport(spec, True, cores, found.version_text, state, latency, disk=disk,
                              data=_data_path(conn, env))
        recorded = found.fingerprint()
        if recorded is None:
            how = "wheels" if boot.wheelhouse_fits(found) else "index"
            return HostReport(spec, True, cores, found.version_text, f"not installed ({how})", latency, disk=disk)
        from backtest.executors.ssh.environment import fingerprint, fingerprint_diff

        diff = fingerprint_diff(fingerprint(), recorded)
        if diff:
            return HostReport(spec, True, cores, found.version_text, "differs", latency, "; ".join(diff), disk)
        data = "-"
        if paths.store_uri():
            data = _data_path(conn, boot.bootstrap(conn, spec))
        return HostReport(spec, True, cores, found.version_text, "match", latency, disk=disk, data=data)
    except BtError as exc:
        return HostReport(spec, True, error=_strip_name(spec, str(exc)))
    finally:
        conn.close()


def _data_path(conn: object, env: object) -> str:
    """How a run's bars reach the host when they are on an object store: the host fetches them
    itself when it can read the store (with its own credentials), else the coordinator ships them."""
    from backtest.executors.ssh.ship import host_store_uri, remote_fetch, store_dir

    uri = paths.store_uri()
    if not uri:
        return "-"
    why = remote_fetch(conn, env.command(), host_store_uri(uri), store_dir(env.cache), None)  # type: ignore[attr-defined]
    return "fetched by the host from the store" if why is None else f"shipped by the coordinator ({why})"


def _strip_name(spec: HostSpec, message: str) -> str:
    prefix = f"{spec.name}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def check_hosts(
    specs: Sequence[HostSpec], settings: object = None, *, install: bool = False, parallel: int = 32
) -> list[HostReport]:
    """Check every host at once; reports come back in the order of ``specs``."""
    if not specs:
        return []
    with ThreadPoolExecutor(max_workers=min(parallel, len(specs))) as pool:
        return list(pool.map(lambda s: check_host(s, settings, install=install), specs))


@dataclass(frozen=True)
class CleanReport:
    spec: HostSpec
    freed: int = 0  # bytes
    left: int = 0  # bytes bt still keeps there
    error: str | None = None


def clean_host(spec: HostSpec, settings: object = None, *, everything: bool = False) -> CleanReport:
    """Delete what bt keeps on the host and no longer needs (every old environment and copy of bt,
    shipped packages and data, strategy copies, records of gone workers), or with ``everything``
    all of it; refused while a bt worker runs there."""
    import json

    from backtest.executors.ssh import environment
    from backtest.executors.ssh.connect import SSHSettings, connect, exec_command, quote_argv
    from backtest.executors.ssh.remote import agent_argv

    ssh = settings if isinstance(settings, SSHSettings) else SSHSettings()
    try:
        conn = connect(spec, ssh)
    except BtError as exc:
        return CleanReport(spec, error=_strip_name(spec, str(exc)))
    try:
        argv = agent_argv(spec.python_command, "clean", environment.env_key(), environment.code_key()[:24],
                          "all" if everything else "old")
        done = exec_command(conn, quote_argv(argv), timeout=300)
        if done.returncode != 0:
            return CleanReport(spec, error=f"cleaning failed on the host: {done.error_tail()}")
        answer = json.loads(done.stdout.decode().strip().splitlines()[-1])
        if "refused" in answer:
            return CleanReport(spec, error=answer["refused"])
        return CleanReport(spec, int(answer["freed"]), int(answer["left"]))
    except (BtError, ValueError, IndexError, KeyError) as exc:
        return CleanReport(spec, error=_strip_name(spec, str(exc)))
    finally:
        conn.close()


def clean_hosts(specs: Sequence[HostSpec], settings: object = None, *, everything: bool = False,
                parallel: int = 32) -> list[CleanReport]:
    """``clean_host`` on every host at once, in the order of ``specs``."""
    if not specs:
        return []
    with ThreadPoolExecutor(max_workers=min(parallel, len(specs))) as pool:
        return list(pool.map(lambda s: clean_host(s, settings, everything=everything), specs))

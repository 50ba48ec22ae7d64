"""Bootstrap a host that has nothing but SSH and a Python ≥ 3.11 into a bt worker host.

First contact: probe the host's Python; ship (by content hash, see ``ship``) the wheelhouse of
bt's exact pinned dependencies and a wheel of the running bt; build a venv keyed by the
environment's hash under ``~/.cache/bt/envs/`` with ``pip install --no-index`` from those wheels,
and unpack bt under ``~/.cache/bt/code/`` keyed by its source hash; each is marked complete by a
file written last. When the host's platform differs from the coordinator's (another platform tag
or an older libc), the same pinned versions are installed from the host's package index instead.

Next contact: one probe call sees both markers and the recorded fingerprint: done. When only bt's
code changed (the environment is complete), only the wheel of bt is shipped and unpacked.

A host whose Python is missing, broken, older than 3.11 or of another minor version than the
coordinator's, or whose resulting environment fingerprint differs, is refused with a
``HostRefused`` (a HostError) that shows the difference.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from backtest.errors import HostError
from backtest.executors.ssh import environment
from backtest.executors.ssh.connect import HostRefused, exec_command, quote_argv
from backtest.executors.ssh.hostsfile import HostSpec
from backtest.executors.ssh.remote import agent_argv
from backtest.executors.ssh.ship import ShipReport, ship

if TYPE_CHECKING:
    import fabric

MIN_PYTHON = (3, 11)
INSTALL_TIMEOUT = 1800.0


@dataclass(frozen=True)
class Probe:
    """What a host's base Python says about itself and its cache."""

    version: tuple[int, int, int]
    executable: str
    cache_tag: str
    platform: str
    machine: str
    libc: tuple[str, str]
    cores: int
    cache: str
    env: dict[str, Any] | None
    code: dict[str, Any] | None
    disk: int | None = None  # bytes under the host's cache dir

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    def fingerprint(self) -> dict[str, str] | None:
        """The recorded fingerprint of the keyed env + code, when both are complete."""
        if not self.env or not self.code:
            return None
        fp = dict(self.env.get("fingerprint", {}))
        fp["bt-farm"] = self.code.get("version")
        return fp


@dataclass(frozen=True)
class RemoteEnv:
    """A host ready to run workers. Phase 2 starts ``worker_argv()`` once per core."""

    spec: HostSpec
    base_python: str
    python: str  # the venv's interpreter on the host
    code_dir: str  # bt's unpacked wheel; goes on PYTHONPATH
    cache: str  # the host's absolute cache dir (~/.cache/bt)
    cores: int  # spec.cores if given, else what the host reports
    reported_cores: int
    python_version: str
    fingerprint: dict[str, str]
    installed: bool  # True when this contact built something
    seconds: float
    shipped: ShipReport | None = field(default=None, compare=False)

    def command(self, *args: str) -> list[str]:
        """argv that runs the env's Python with bt importable: ``command("-m", "backtest.worker")``."""
        return ["env", f"PYTHONPATH={self.code_dir}", self.python, *args]

    def worker_argv(self) -> list[str]:
        return self.command("-m", "backtest.worker")


def probe(conn: fabric.Connection, spec: HostSpec, trim: int | None = None) -> Probe:
    """Run the agent's probe with the host's base Python; refuse a missing/broken/old Python.
    ``trim``: also bound the host's shipped files to that many bytes (the agent's ``trim``), in the
    same call."""
    python = spec.python_command
    extra = [str(trim)] if trim is not None else []
    done = exec_command(
        conn,
        quote_argv(agent_argv(python, "probe", environment.env_key(), environment.code_key()[:24], *extra)),
        timeout=60,
    )
    if done.returncode != 0:
        raise HostRefused(
            f"{spec.name}: python {python!r} does not work on the host ({done.error_tail()}); "
            "set python=PATH to a Python ≥ 3.11 in the hosts file"
        )
    try:
        info = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise HostRefused(
            f"{spec.name}: python {python!r} printed no probe result: {done.stdout[:200]!r}"
        ) from exc
    found = Probe(
        version=tuple(info["version"]),
        executable=info["executable"],
        cache_tag=info["cache_tag"],
        platform=info["platform"],
        machine=info["machine"],
        libc=tuple(info["libc"]),
        cores=int(info["cores"]),
        cache=info["cache"],
        env=info.get("env"),
        code=info.get("code"),
        disk=info.get("disk"),
    )
    local = environment.fingerprint()
    if found.version[:2] < MIN_PYTHON:
        raise HostRefused(
            f"{spec.name}: python {python!r} is {found.version_text}; bt needs ≥ 3.11 "
            "(set python=PATH in the hosts file)"
        )
    there = "{}.{}".format(*found.version[:2])
    if there != local["python"] or found.machine != local["machine"]:
        diff = environment.fingerprint_diff(
            {"python": local["python"], "machine": local["machine"]},
            {"python": there, "machine": found.machine},
        )
        raise HostRefused(f"{spec.name}: environment differs from this one: {'; '.join(diff)}")
    return found


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def wheelhouse_fits(found: Probe) -> bool:
    """Do the coordinator's wheels install on this host? Same ABI and platform, libc no older."""
    here = environment.platform_info()
    if found.cache_tag != here["cache_tag"] or found.platform != here["platform"]:
        return False
    libc_here = here["libc"]
    assert isinstance(libc_here, list)
    if found.libc[0] != libc_here[0]:
        return False
    return _version_tuple(found.libc[1]) >= _version_tuple(libc_here[1])


def _check_fingerprint(spec: HostSpec, remote: dict[str, Any]) -> dict[str, str]:
    diff = environment.fingerprint_diff(environment.fingerprint(), remote)
    if diff:
        raise HostRefused(f"{spec.name}: environment differs from this one: {'; '.join(diff)}")
    return {k: str(v) for k, v in remote.items()}


def install_plan(mode: str, *, env_ready: bool = False) -> tuple[list[environment.Wheel], dict[str, Any]]:
    """The wheels a host needs and the agent's ``install`` plan.

    ``mode`` is "wheelhouse" (ship every pinned wheel) or "index" (ship pip and bt; the host's
    index supplies the pins). With ``env_ready`` the host's environment is complete and only bt's
    own wheel is shipped (the wheelhouse is then not even built here).
    """
    code = environment.code_wheel()
    code_key = environment.code_key()[:24]
    plan: dict[str, Any] = {
        "env_key": environment.env_key(),
        "code_key": code_key,
        "mode": mode,
        "code": {**code.as_plan(), "version": environment.bt_version()},
    }
    if env_ready:
        return [code], plan
    pip_name = environment.pip_pin().split("==")[0]
    wheels = environment.wheelhouse()
    pip_wheel = next(w for w in wheels if w.name.split("-")[0].lower() == pip_name)
    send = [code, pip_wheel] + ([w for w in wheels if w is not pip_wheel] if mode == "wheelhouse" else [])
    plan.update(
        pip=pip_wheel.as_plan(),
        wheels=[w.as_plan() for w in wheels],
        pins=list(environment.pins()) + [environment.pip_pin()],
    )
    return send, plan


def bootstrap(
    conn: fabric.Connection,
    spec: HostSpec,
    *,
    force_mode: str | None = None,
    on_step: Callable[[str], None] | None = None,
    trim: int | None = None,
) -> RemoteEnv:
    """Make the host ready (or find it ready) and return how to run bt there.

    ``trim``: bound the files shipped to the host for earlier runs to that many bytes first (in
    the probe's call: no extra round trip).

    ``force_mode`` ("wheelhouse" or "index") overrides the platform decision (tests).
    ``on_step`` is told what is happening ("probing", "building wheelhouse", "shipping", ...).
    """
    start = time.perf_counter()
    step = on_step or (lambda _msg: None)
    step("probing")
    found = probe(conn, spec, trim)
    code_key = environment.code_key()[:24]
    env_dir = f"{found.cache}/envs/{environment.env_key()}"
    code_dir = f"{found.cache}/code/{code_key}"
    recorded = found.fingerprint()
    installed = False
    shipped: ShipReport | None = None
    if recorded is not None:
        fingerprint = _check_fingerprint(spec, recorded)
    else:
        mode = force_mode or ("wheelhouse" if wheelhouse_fits(found) else "index")
        step("building wheels")
        send, plan = install_plan(mode, env_ready=found.env is not None)
        step(f"shipping {len(send)} wheels")
        shipped = ship(conn, [(w.path, w.sha256) for w in send], python=spec.python_command)
        step(f"installing ({mode})")
        done = exec_command(
            conn,
            quote_argv(agent_argv(spec.python_command, "install")),
            input=json.dumps(plan).encode(),
            timeout=INSTALL_TIMEOUT,
        )
        if done.returncode != 0:
            raise HostError(f"{spec.name}: installing bt's environment failed: {done.error_tail()}")
        result = json.loads(done.stdout.decode().strip().splitlines()[-1])
        fingerprint = _check_fingerprint(spec, result["fingerprint"])
        installed = True
    return RemoteEnv(
        spec=spec,
        base_python=found.executable,
        python=f"{env_dir}/bin/python",
        code_dir=code_dir,
        cache=found.cache,
        cores=spec.cores or found.cores,
        reported_cores=found.cores,
        python_version=found.version_text,
        fingerprint=fingerprint,
        installed=installed,
        seconds=time.perf_counter() - start,
        shipped=shipped,
    )

"""SSH connections to farm hosts: verified host keys, fast failure detection, binary-safe exec.

``connect(spec)`` returns an open ``fabric.Connection`` that

- uses the user's keys and ``~/.ssh/config`` (fabric's own resolution: User, Port, HostName,
  IdentityFile, ProxyJump/ProxyCommand), plus the hosts file's ``key=``;
- verifies the host key against known_hosts (``UserKnownHostsFile`` from ssh config, else
  ``~/.ssh/known_hosts``, plus ``/etc/ssh/ssh_known_hosts``; ``BT_KNOWN_HOSTS`` or the
  ``known_hosts`` setting override the user file). fabric itself loads no known_hosts and
  accepts any key (fabric issue #2071); here an unknown key is refused unless
  ``accept_new_hosts`` is set, in which case it is appended to the user file; a changed key is
  always refused;
- sends SSH keepalives and sets TCP_USER_TIMEOUT (plus TCP keepalives) on the socket, so that a
  crashed or cut-off host breaks the connection within ``dead_after`` seconds instead of hanging
  (paramiko's keepalive alone never gives up, paramiko issue #2463). A frozen host still ACKs TCP:
  only application heartbeats catch that.

Errors are ``HostError`` with one line naming the host; ``HostRefused`` (a ``HostError``) when the
host answered but cannot be used as it is (host key, authentication): retrying will not help.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import os
import re
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backtest.errors import HostError
from backtest.executors.ssh.hostsfile import HostSpec

if TYPE_CHECKING:
    import fabric
    import paramiko

_TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)


class HostRefused(HostError):
    """The host answered but cannot be used as it is: unknown or changed host key, failed
    authentication, unusable Python, different environment. Retrying will not help; the SSH
    executor sets such a host aside at once instead of backing off and retrying."""


@dataclass(frozen=True)
class SSHSettings:
    """How to reach hosts. Defaults suit a farm; tests shorten nothing but known_hosts."""

    known_hosts: Path | None = None
    accept_new_hosts: bool = False
    connect_timeout: float = 10.0
    keepalive_interval: int = 2
    dead_after: float = 10.0  # seconds of unacknowledged data before the kernel drops the link


@dataclass(frozen=True)
class Completed:
    """A finished remote command."""

    returncode: int
    stdout: bytes
    stderr: bytes

    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    def error_tail(self, limit: int = 300) -> str:
        err = self.stderr.decode("utf-8", "replace").strip() or self.text().strip()
        lines = [ln for ln in err.splitlines() if ln.strip()]
        return (lines[-1] if lines else f"exit status {self.returncode}")[-limit:]


_BARE = re.compile(r"[A-Za-z0-9_@+=:,./-]+")
_SPECIAL = re.compile(r"(['\\])")


def quote_argv(argv: Sequence[str]) -> str:
    r"""A command line that runs exactly ``argv`` under any common login shell.

    sshd hands the command to the user's login shell, and shells differ: fish reads ``\\`` and
    ``\'`` as escapes even inside single quotes (sh, bash and zsh do not), and has no ``$((...))``
    or ``[ ]``. A word of plain characters is left bare; any other word is single-quoted, except
    that each quote and backslash stands alone in double quotes (``"'"``, ``"\\"``), which sh,
    dash, bash, zsh and fish all read the same way. Shell scripts go through ``sh_argv``.
    """
    words = []
    for arg in argv:
        if _BARE.fullmatch(arg):
            words.append(arg)
            continue
        parts = []
        for piece in _SPECIAL.split(arg):
            if piece == "'":
                parts.append('"\'"')
            elif piece == "\\":
                parts.append('"\\\\"')
            elif piece:
                parts.append(f"'{piece}'")
        words.append("".join(parts) or "''")
    return " ".join(words)


def sh_argv(script: str) -> list[str]:
    """Run a POSIX ``sh`` script whatever the login shell is (fish does not read sh syntax)."""
    return ["sh", "-c", script]


def fingerprint_of(key: paramiko.PKey) -> str:
    import hashlib

    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def user_known_hosts(settings: SSHSettings, ssh_config: dict[str, Any]) -> Path:
    if settings.known_hosts is not None:
        return Path(settings.known_hosts).expanduser()
    env = os.environ.get("BT_KNOWN_HOSTS")
    if env:
        return Path(env).expanduser()
    configured = ssh_config.get("userknownhostsfile")
    if configured:
        first = configured[0] if isinstance(configured, list) else str(configured).split()[0]
        return Path(first).expanduser()
    return Path("~/.ssh/known_hosts").expanduser()


def _host_key_policy(known_hosts: Path, accept_new: bool, name: str) -> paramiko.MissingHostKeyPolicy:
    import paramiko

    class _Policy(paramiko.MissingHostKeyPolicy):
        """Refuse unknown host keys, or record them in known_hosts when accepting new hosts."""

        def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
            if not accept_new:
                raise HostRefused(
                    f"{name}: host key {key.get_name()} {fingerprint_of(key)} is not in {known_hosts}; "
                    "check it and add it (ssh once by hand), or pass --accept-new-hosts"
                )
            client.get_host_keys().add(hostname, key.get_name(), key)
            known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(known_hosts, "a", encoding="utf-8") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")

    return _Policy()


def _open_socket(host: str, port: int, settings: SSHSettings, name: str) -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout=settings.connect_timeout)
    except TimeoutError as exc:
        raise HostError(
            f"{name}: no answer from {host}:{port} within {settings.connect_timeout:g} s"
        ) from exc
    except socket.gaierror as exc:
        raise HostError(f"{name}: unknown host {host!r} ({exc.strerror})") from exc
    except OSError as exc:
        raise HostError(f"{name}: cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
    tune_socket(sock, settings)
    return sock


def tune_socket(sock: socket.socket, settings: SSHSettings) -> None:
    """TCP_USER_TIMEOUT + TCP keepalives + no Nagle: a dead peer is noticed within dead_after."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle = max(1, int(settings.dead_after / 2))
        sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", 4), idle)
        sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", 5), 1)
        sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", 6), max(1, idle))
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT, int(settings.dead_after * 1000))


@functools.lru_cache(maxsize=1)
def _gcm_first_transport() -> type[paramiko.Transport]:
    """A Transport that offers AES-GCM first: no separate HMAC per packet, which paramiko computes
    in Python; receiving workers' results then costs the coordinator about a third less CPU. A
    server without GCM negotiates the next cipher of paramiko's usual list."""
    import paramiko

    # paramiko has no public way to order ciphers: its class attribute is private, so a paramiko
    # without it (or with another shape) gets its own Transport, with its own order, unchanged.
    found = getattr(paramiko.Transport, "_preferred_ciphers", None)
    if not isinstance(found, tuple) or not all(isinstance(c, str) for c in found):
        return paramiko.Transport
    preferred: tuple[str, ...] = found
    gcm = tuple(c for c in preferred if "-gcm@" in c)

    class GcmFirst(paramiko.Transport):
        _preferred_ciphers = gcm + tuple(c for c in preferred if c not in gcm)

    return GcmFirst


def connect(spec: HostSpec, settings: SSHSettings | None = None) -> fabric.Connection:
    """Open a verified, keepalive'd SSH connection to ``spec``; raise HostError on any failure."""
    import logging

    import fabric
    import paramiko

    # paramiko logs what it then raises (e.g. "channel open FAILED"); bt reports the error itself,
    # and Python's last-resort handler would print those lines into the terminal's display
    log = logging.getLogger("paramiko")
    if not log.handlers:
        log.addHandler(logging.NullHandler())

    settings = settings or SSHSettings()
    name = spec.name
    config = fabric.Config(
        overrides={
            # pytest (and any caller without a terminal) must not have stdin read
            "run": {"in_stream": False, "hide": True, "warn": True},
            "timeouts": {"connect": int(settings.connect_timeout)},
        }
    )
    connect_kwargs: dict[str, Any] = {
        "banner_timeout": settings.connect_timeout,
        "auth_timeout": settings.connect_timeout,
        "channel_timeout": settings.connect_timeout,
        "transport_factory": _gcm_first_transport(),
    }
    if spec.key:
        key_file = Path(spec.key).expanduser()
        if not key_file.is_file() or not os.access(key_file, os.R_OK):
            why = "does not exist" if not key_file.exists() else "cannot be read"
            raise HostRefused(f"{name}: key file {key_file} {why}; fix key= in the hosts file")
        connect_kwargs["key_filename"] = [str(key_file)]
    conn = fabric.Connection(
        spec.host,
        user=spec.user,
        port=spec.port,
        config=config,
        connect_timeout=int(settings.connect_timeout),
        connect_kwargs=connect_kwargs,
    )
    known = user_known_hosts(settings, dict(conn.ssh_config))
    client = conn.client
    system_known = Path("/etc/ssh/ssh_known_hosts")
    try:
        if system_known.exists():
            client.load_system_host_keys(str(system_known))
        if known.exists():
            client.get_host_keys().load(str(known))
    except (OSError, paramiko.SSHException) as exc:
        raise HostRefused(f"{name}: cannot read known_hosts {known}: {exc}") from exc
    client.set_missing_host_key_policy(_host_key_policy(known, settings.accept_new_hosts, name))

    sock: socket.socket | None = None
    if not conn.gateway:
        sock = _open_socket(conn.host, conn.port, settings, name)
        conn.connect_kwargs["sock"] = sock
    started = time.monotonic()
    try:
        conn.open()
    except HostError:
        _close_quietly(conn, sock)
        raise
    except paramiko.BadHostKeyException as exc:
        _close_quietly(conn, sock)
        raise HostRefused(
            f"{name}: host key CHANGED (server offers {fingerprint_of(exc.key)}, known_hosts has "
            f"{fingerprint_of(exc.expected_key)}); refusing to connect. If the host was reinstalled, "
            f"remove the old key: ssh-keygen -R {exc.hostname} -f {known}"
        ) from exc
    except paramiko.AuthenticationException as exc:
        _close_quietly(conn, sock)
        raise HostRefused(f"{name}: authentication failed for user {conn.user!r} ({exc})") from exc
    except (paramiko.SSHException, EOFError) as exc:
        _close_quietly(conn, sock)
        text = str(exc) or type(exc).__name__
        if "banner" in text.lower() or time.monotonic() - started >= settings.connect_timeout * 0.9:
            text = f"no SSH answer within {settings.connect_timeout:g} s ({text})"
        raise HostError(f"{name}: SSH failed: {text}") from exc
    except OSError as exc:
        _close_quietly(conn, sock)
        raise HostError(f"{name}: connection failed: {exc.strerror or exc}") from exc
    transport = conn.transport
    assert transport is not None
    transport.set_keepalive(settings.keepalive_interval)
    if sock is None and isinstance(transport.sock, socket.socket):
        tune_socket(transport.sock, settings)
    return conn


def _close_quietly(conn: fabric.Connection, sock: socket.socket | None) -> None:
    with contextlib.suppress(Exception):
        conn.close()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


def host_label(conn: fabric.Connection) -> str:
    return f"{conn.user}@{conn.host}" + (f":{conn.port}" if conn.port != 22 else "")


def exec_command(
    conn: fabric.Connection,
    command: str | Sequence[str],
    *,
    input: bytes | None = None,
    timeout: float | None = 120.0,
) -> Completed:
    """Run one command over a fresh channel; stdin from ``input``; stdout/stderr as bytes.

    Raises HostError when the connection is lost or the command outlives ``timeout``.
    """
    cmd = command if isinstance(command, str) else quote_argv(command)
    transport = conn.transport
    if transport is None or not transport.is_active():
        raise HostError(f"{host_label(conn)}: not connected")
    try:
        chan = transport.open_session(timeout=timeout)
    except Exception as exc:
        if not transport.is_active():
            raise HostError(f"{host_label(conn)}: connection lost") from exc
        raise HostError(f"{host_label(conn)}: command timed out: no channel within {timeout:g} s") from exc
    deadline = None if timeout is None else time.monotonic() + timeout
    err_chunks: list[bytes] = []
    try:
        chan.settimeout(None)
        chan.exec_command(cmd)

        def read_stderr() -> None:
            while True:
                try:
                    data = chan.recv_stderr(65536)
                except TimeoutError:
                    if chan.closed or not transport.is_active():
                        return
                    continue
                if not data:
                    return
                err_chunks.append(data)

        err_thread = threading.Thread(target=read_stderr, daemon=True)
        err_thread.start()
        if input:
            chan.sendall(input)
        chan.shutdown_write()
        chan.settimeout(1.0)
        out = bytearray()
        while True:
            try:
                data = chan.recv(262144)
            except TimeoutError:
                if not transport.is_active():
                    raise HostError(f"{host_label(conn)}: connection lost") from None
                if deadline is not None and time.monotonic() > deadline:
                    raise HostError(f"{host_label(conn)}: command timed out after {timeout:g} s") from None
                continue
            if not data:
                break
            out += data
        while not chan.exit_status_ready():
            if not transport.is_active():
                raise HostError(f"{host_label(conn)}: connection lost")
            if deadline is not None and time.monotonic() > deadline:
                raise HostError(f"{host_label(conn)}: command timed out after {timeout:g} s")
            chan.status_event.wait(0.2)
        err_thread.join(timeout=5)
        status = chan.recv_exit_status()
        if status == -1 and not transport.is_active():  # paramiko closes channels of a dead link
            raise HostError(f"{host_label(conn)}: connection lost")
    except OSError as exc:
        raise HostError(f"{host_label(conn)}: connection lost: {exc}") from exc
    finally:
        chan.close()
    return Completed(status, bytes(out), b"".join(err_chunks))


def ping(conn: fabric.Connection, timeout: float = 5.0) -> float:
    """One SSH round trip (a global request the server answers); seconds, or raise HostError."""
    transport = conn.transport
    if transport is None or not transport.is_active():
        raise HostError(f"{host_label(conn)}: not connected")
    done = threading.Event()

    def request() -> None:
        with contextlib.suppress(Exception):
            transport.global_request("keepalive@openssh.com", wait=True)
        done.set()

    start = time.perf_counter()
    threading.Thread(target=request, daemon=True).start()
    if not done.wait(timeout) or not transport.is_active():
        raise HostError(f"{host_label(conn)}: no answer to a ping within {timeout:g} s")
    return time.perf_counter() - start

"""Connections to real sshd servers: host keys, auth, timeouts, dead/frozen/cut hosts."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from netns_farm import Farm, Host

from backtest.errors import HostError
from backtest.executors.ssh.connect import HostRefused, SSHSettings, connect, exec_command, ping
from backtest.executors.ssh.hostsfile import HostSpec

pytestmark = pytest.mark.ssh


def spec_for(farm: Farm, host: Host, **kw: object) -> HostSpec:
    return HostSpec(host.address, user=host.user, key=str(farm.client_key), **kw)  # type: ignore[arg-type]


def test_each_host_is_its_own_user_with_its_own_home(farm: Farm, settings: SSHSettings) -> None:
    homes = set()
    for host in farm.hosts:
        conn = connect(spec_for(farm, host), settings)
        try:
            done = exec_command(conn, "id -un; echo $HOME")
            user, home = done.text().split()
            assert (user, home) == (host.user, str(host.home))
            homes.add(home)
            assert 0 < ping(conn) < 1
        finally:
            conn.close()
    assert len(homes) == len(farm.hosts)


def test_exec_command_is_binary_safe_and_reports_status(farm: Farm, settings: SSHSettings) -> None:
    payload = os.urandom(3 * 1024 * 1024)
    conn = connect(spec_for(farm, farm.hosts[0]), settings)
    try:
        done = exec_command(conn, "cat; echo oops >&2; exit 3", input=payload)
        assert done.returncode == 3
        assert done.stdout == payload
        assert done.stderr == b"oops\n"
        start = time.monotonic()
        with pytest.raises(HostError, match="timed out after 1 s"):
            exec_command(conn, "sleep 30", timeout=1)
        assert time.monotonic() - start < 4
    finally:
        conn.close()


def test_unknown_host_key_is_refused(farm: Farm, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostError, match=r"is not in .*known_hosts; .*--accept-new-hosts") as err:
        connect(spec_for(farm, farm.hosts[0]), SSHSettings(known_hosts=empty))
    assert "SHA256:" in str(err.value)


def test_accept_new_hosts_records_the_key_once(farm: Farm, tmp_path: Path) -> None:
    known = tmp_path / "sub" / "known_hosts"
    host = farm.hosts[0]
    conn = connect(spec_for(farm, host), SSHSettings(known_hosts=known, accept_new_hosts=True))
    conn.close()
    kind, key = Path(str(host.host_key) + ".pub").read_text().split()[:2]
    assert known.read_text() == f"{host.address} {kind} {key}\n"
    conn = connect(spec_for(farm, host), SSHSettings(known_hosts=known))  # now known, no flag needed
    conn.close()
    assert known.read_text().count("\n") == 1


def test_changed_host_key_is_refused_even_when_accepting_new(farm: Farm, tmp_path: Path) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, key = Path(str(other) + ".pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    host = farm.hosts[1]
    known.write_text(f"{host.address} {kind} {key}\n")
    for accept in (False, True):
        with pytest.raises(HostError) as err:
            connect(spec_for(farm, host), SSHSettings(known_hosts=known, accept_new_hosts=accept))
        msg = str(err.value)
        assert "host key CHANGED" in msg and "refusing" in msg and f"ssh-keygen -R {host.address}" in msg
        assert "\n" not in msg


def test_wrong_key_fails_authentication(farm: Farm, settings: SSHSettings, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    spec = HostSpec(farm.hosts[0].address, user=farm.hosts[0].user, key=str(stranger))
    with pytest.raises(HostError, match="authentication failed"):
        connect(spec, SSHSettings(known_hosts=farm.known_hosts, connect_timeout=3))


def test_a_missing_key_file_is_named_and_not_retried(farm: Farm, tmp_path: Path) -> None:
    """A key= file that does not exist is the hosts file's mistake, not the network's: refused at
    once (HostRefused: the executor sets the host aside instead of retrying) with the file named."""
    missing = tmp_path / "no_such_key"
    spec = HostSpec(farm.hosts[0].address, user=farm.hosts[0].user, key=str(missing))
    start = time.monotonic()
    with pytest.raises(HostRefused, match=f"key file {missing} does not exist; fix key= in the hosts file"):
        connect(spec, SSHSettings(known_hosts=farm.known_hosts, connect_timeout=3))
    assert time.monotonic() - start < 1


def test_host_that_never_answers_times_out(farm: Farm) -> None:
    spec = HostSpec(farm.silent_address(), user="nobody")
    start = time.monotonic()
    with pytest.raises(HostError, match="no answer from .* within 2 s"):
        connect(spec, SSHSettings(known_hosts=farm.known_hosts, connect_timeout=2))
    assert time.monotonic() - start < 4


def test_closed_port_is_refused_at_once(farm: Farm, settings: SSHSettings) -> None:
    start = time.monotonic()
    with pytest.raises(HostError, match="refused"):
        connect(spec_for(farm, farm.hosts[0], port=2222), settings)
    assert time.monotonic() - start < 2


def _run_in_thread(conn: object, command: str) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            exec_command(conn, command, timeout=None)  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, errors


def test_cut_link_is_detected_within_about_ten_seconds(own_farm: Farm) -> None:
    """Default settings: keepalives + TCP_USER_TIMEOUT=10 s turn a silent cut into an error."""
    host = own_farm.hosts[0]
    conn = connect(spec_for(own_farm, host), SSHSettings(known_hosts=own_farm.known_hosts))
    thread, errors = _run_in_thread(conn, "sleep 120")
    time.sleep(0.5)
    own_farm.cut(host)
    start = time.monotonic()
    thread.join(timeout=20)
    elapsed = time.monotonic() - start
    assert not thread.is_alive(), "a silent command hung on a cut link"
    assert errors and isinstance(errors[0], HostError) and "connection lost" in str(errors[0])
    print(f"cut link detected after {elapsed:.1f} s")
    assert elapsed < 14, elapsed
    conn.close()


def test_killed_host_is_detected_at_once(own_farm: Farm) -> None:
    host = own_farm.hosts[0]
    conn = connect(spec_for(own_farm, host), SSHSettings(known_hosts=own_farm.known_hosts))
    thread, errors = _run_in_thread(conn, "sleep 120")
    time.sleep(0.5)
    start = time.monotonic()
    own_farm.kill(host)
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert time.monotonic() - start < 3
    assert errors and isinstance(errors[0], HostError)
    with pytest.raises(HostError, match="refused"):
        connect(spec_for(own_farm, host), SSHSettings(known_hosts=own_farm.known_hosts))
    conn.close()


def test_frozen_host_times_out_instead_of_hanging(own_farm: Farm) -> None:
    host = own_farm.hosts[0]
    settings = SSHSettings(known_hosts=own_farm.known_hosts, connect_timeout=2)
    conn = connect(spec_for(own_farm, host), settings)
    own_farm.freeze(host)
    try:
        start = time.monotonic()
        with pytest.raises(HostError, match="no answer to a ping"):
            ping(conn, timeout=1)
        with pytest.raises(HostError, match="timed out"):
            exec_command(conn, "true", timeout=2)
        with pytest.raises(HostError, match="no SSH answer"):
            connect(spec_for(own_farm, host), settings)  # the kernel accepts; sshd never speaks
        assert time.monotonic() - start < 10
    finally:
        own_farm.thaw(host)
        conn.close()

"""Bootstrap over SSH onto hosts with nothing but Python: first and second contact, refusals,
the index path, remote streams without orphans, and ``bt hosts check``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netns_farm import Farm, Host
from typer.testing import CliRunner

from backtest.errors import HostError
from backtest.executors.ssh import environment
from backtest.executors.ssh.bootstrap import RemoteEnv, bootstrap
from backtest.executors.ssh.connect import SSHSettings, connect, exec_command
from backtest.executors.ssh.hostsfile import HostSpec
from backtest.executors.ssh.stream import open_stream

pytestmark = pytest.mark.ssh

MARK = "bt-echo-marker"
ECHO = (
    "import subprocess, sys\n"
    "helper = subprocess.Popen(['sleep', '300', sys.argv[1]])  # a grandchild that must not survive\n"
    "for line in sys.stdin.buffer:\n"
    "    sys.stdout.buffer.write(line.upper())\n"
    "    sys.stdout.buffer.flush()\n"
    "helper.kill()\n"
)


def spec_for(farm: Farm, host: Host, **kw: Any) -> HostSpec:
    return HostSpec(host.address, user=host.user, key=str(farm.client_key), **kw)


def settings_for(farm: Farm) -> SSHSettings:
    return SSHSettings(known_hosts=farm.known_hosts, connect_timeout=3)


@pytest.fixture(scope="module")
def first(farm: Farm) -> RemoteEnv:
    """First contact with host 1 (the coordinator's wheelhouse may be cached from earlier runs)."""
    host = farm.hosts[0]
    conn = connect(spec_for(farm, host), settings_for(farm))
    try:
        env = bootstrap(conn, spec_for(farm, host))
    finally:
        conn.close()
    print(
        f"\nfirst contact: {env.seconds:.1f} s, shipped {env.shipped.bytes_wire / 1e6:.0f} MB "  # type: ignore[union-attr]
        f"in {env.shipped.seconds:.1f} s"
    )  # type: ignore[union-attr]
    return env


@pytest.fixture
def conn1(farm: Farm, first: RemoteEnv) -> Iterator[Any]:
    c = connect(spec_for(farm, farm.hosts[0]), settings_for(farm))
    yield c
    c.close()


def test_first_contact_installs_the_exact_environment(farm: Farm, first: RemoteEnv, conn1: Any) -> None:
    assert first.installed
    assert first.fingerprint == environment.fingerprint()
    assert first.python.startswith(str(farm.hosts[0].home / ".cache" / "bt" / "envs"))
    assert first.cores == 2 and first.reported_cores >= 1
    script = (
        "import json, backtest, numpy, numba, pyarrow, duckdb\n"
        "from importlib import metadata\n"
        "print(json.dumps({'bt': backtest.__file__, 'numpy': numpy.__version__, "
        "'numba': numba.__version__, 'bt_version': metadata.version('bt-farm')}))\n"
    )
    done = exec_command(conn1, first.command("-c", script), timeout=120)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["bt"].startswith(first.code_dir)
    assert info["numpy"] == environment.fingerprint()["numpy"]
    assert info["numba"] == environment.fingerprint()["numba"]
    assert info["bt_version"] == environment.bt_version()


def test_second_contact_takes_under_a_second(farm: Farm, first: RemoteEnv) -> None:
    spec = spec_for(farm, farm.hosts[0])
    start = time.perf_counter()
    conn = connect(spec, settings_for(farm))
    env = bootstrap(conn, spec)
    elapsed = time.perf_counter() - start
    conn.close()
    print(f"second contact (connect + check): {elapsed * 1000:.0f} ms")
    assert not env.installed and env.shipped is None
    assert env.python == first.python and env.fingerprint == first.fingerprint
    assert elapsed <= 1.0


def test_an_incomplete_install_is_redone_without_resending(farm: Farm, first: RemoteEnv, conn1: Any) -> None:
    # as if the install died after the venv was built but before bt's code was unpacked (or bt's
    # code changed): only bt's own wheel is needed, and the host has it already
    assert exec_command(conn1, f"rm -r {first.code_dir}").returncode == 0
    env = bootstrap(conn1, spec_for(farm, farm.hosts[0]))
    assert env.installed and env.fingerprint == first.fingerprint
    assert env.shipped is not None and env.shipped.sent == [] and env.shipped.bytes_wire == 0
    assert env.shipped.present == [environment.code_wheel().sha256]
    assert exec_command(conn1, env.command("-c", "import backtest.executors.ssh")).returncode == 0


def test_a_broken_or_old_python_is_refused(farm: Farm, tmp_path: Path) -> None:
    host = farm.hosts[1]
    settings = settings_for(farm)
    cases = [
        ("/usr/bin/false", r"python '/usr/bin/false' does not work on the host \(exit status 1\)"),
        ("/no/such/python", r"python '/no/such/python' does not work on the host \(.*(not found|No such file)"),
    ]
    old = Path("/root/.pyenv/versions/3.10.13")
    if old.exists():
        # an old Python the host user can run: a hard-linked copy plus a wrapper for its libpython
        copy = farm.dir / "py310"
        if not copy.exists():
            subprocess.run(["cp", "-al", str(old), str(copy)], check=True)
        wrapper = farm.dir / "python3.10"
        wrapper.write_text(f'#!/bin/sh\nLD_LIBRARY_PATH={copy}/lib exec {copy}/bin/python3.10 "$@"\n')
        wrapper.chmod(0o755)
        cases.append((str(wrapper), r"is 3\.10\.\d+; bt needs ≥ 3\.11"))
    for python, pattern in cases:
        spec = spec_for(farm, host, python=python)
        conn = connect(spec, settings)
        try:
            with pytest.raises(HostError, match=pattern):
                bootstrap(conn, spec)
        finally:
            conn.close()


def test_a_host_whose_environment_differs_is_refused_with_the_difference(farm: Farm) -> None:
    host = farm.hosts[1]
    spec = spec_for(farm, host)
    conn = connect(spec, settings_for(farm))
    cache = host.home / ".cache" / "bt"
    env_dir = cache / "envs" / environment.env_key()
    code_dir = cache / "code" / environment.code_key()[:24]
    try:
        fp = dict(environment.fingerprint())
        fp.pop("bt-farm")
        fp["numpy"] = "1.26.4"
        for path, marker in (
            (env_dir, {"fingerprint": fp}),
            (code_dir, {"version": environment.bt_version()}),
        ):
            (path / "bin").mkdir(parents=True)
            (path / ".bt-ready").write_text(json.dumps(marker))
        (env_dir / "bin" / "python").symlink_to("/usr/bin/python3")
        shutil.chown(cache, host.user)
        with pytest.raises(HostError) as err:
            bootstrap(conn, spec)
        numpy = environment.fingerprint()["numpy"]
        assert f"environment differs from this one: numpy {numpy} here, 1.26.4 there" in str(err.value)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        conn.close()


def test_index_mode_installs_the_same_pins_from_the_hosts_index(farm: Farm) -> None:
    """When the wheelhouse does not fit the host's platform, the host's pip gets the same pins
    from its own index; here that index is a local folder named in the host user's pip.conf."""
    host = farm.hosts[1]
    index = farm.dir / "index"
    if not index.exists():
        index.mkdir()
        for wheel in environment.wheelhouse():
            shutil.copy(wheel.path, index / wheel.name)
    pip_conf = host.home / ".config" / "pip" / "pip.conf"
    pip_conf.parent.mkdir(parents=True, exist_ok=True)
    pip_conf.write_text(f"[global]\nno-index = true\nfind-links = {index}\n")
    subprocess.run(["chown", "-R", f"{host.user}:", str(host.home)], check=True)
    spec = spec_for(farm, host)
    conn = connect(spec, settings_for(farm))
    try:
        env = bootstrap(conn, spec, force_mode="index")
        assert env.installed and env.fingerprint == environment.fingerprint()
        assert env.shipped is not None and len(env.shipped.sent) == 2  # bt's wheel and pip's only
        again = bootstrap(conn, spec)
        assert not again.installed
    finally:
        conn.close()


def _marked(host: Host) -> list[str]:
    return [p for p in host.user_processes() if MARK in p]


def _wait_gone(host: Host, seconds: float = 5.0) -> list[str]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = _marked(host)
        if not left:
            return []
        time.sleep(0.1)
    return _marked(host)


def test_stream_round_trip_and_kill_leaves_no_orphans(farm: Farm, first: RemoteEnv, conn1: Any) -> None:
    host = farm.hosts[0]
    proc = open_stream(conn1, first.command("-c", ECHO, MARK))
    assert proc.pgid is not None
    for i in range(200):
        proc.stdin.write(b"frame %d\n" % i)
        proc.stdin.flush()
        assert proc.stdout.readline() == b"FRAME %d\n" % i
    assert len(_marked(host)) >= 2  # the program and its grandchild
    assert (host.home / ".cache" / "bt" / "procs" / str(proc.pgid)).exists()
    proc.kill()
    assert _wait_gone(host) == []
    assert not (host.home / ".cache" / "bt" / "procs" / str(proc.pgid)).exists()


@pytest.mark.parametrize("how", ["close channel", "close connection", "close stdin"])
def test_stream_ends_with_its_channel(farm: Farm, first: RemoteEnv, how: str) -> None:
    host = farm.hosts[0]
    spec = spec_for(farm, host)
    conn = connect(spec, settings_for(farm))
    try:
        proc = open_stream(conn, first.command("-c", ECHO, MARK))
        proc.stdin.write(b"x\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"X\n"
        if how == "close channel":
            proc.channel.close()
        elif how == "close connection":
            conn.close()
        else:
            proc.close_stdin()
            assert proc.wait(timeout=10) == 0
        assert _wait_gone(host) == [], how
    finally:
        conn.close()


def test_hosts_check_reports_every_host(farm: Farm, first: RemoteEnv) -> None:
    import typer

    from backtest.cli.hosts import app as hosts_app

    app = typer.Typer()
    app.add_typer(hosts_app, name="hosts")
    good = farm.hosts[0].line(key=farm.client_key)
    hosts = farm.hosts_file(
        [
            good,
            farm.hosts[1].line(key=farm.client_key, python="/usr/bin/false"),
            f"nobody@{farm.silent_address()}",
        ],
        name="check.txt",
    )
    runner = CliRunner()
    args = ["hosts", "check", str(hosts), "--known-hosts", str(farm.known_hosts), "--timeout", "2", "--no-trial"]
    start = time.monotonic()
    result = runner.invoke(app, args, env={"COLUMNS": "250"})
    assert time.monotonic() - start < 6, "hosts are not checked in parallel"
    assert result.exit_code == 1, result.output
    out = result.output
    for column in ("host", "reachable", "cores", "python", "environment", "latency ms", "disk", "trial", "error"):
        assert column in out
    lines = {ln.split("│")[1].strip(): ln for ln in out.splitlines() if ln.count("│") > 3}
    row = lines[f"{farm.hosts[0].user}@{farm.hosts[0].address}"]
    assert re.search(r"│\s*yes\s*│\s*2\s*│\s*3\.11\.\d+\s*│\s*match\s*│\s*\d+\.\d\s*│\s*\d+\.\d [MG]B\s*│", row), row
    assert "does not work" in lines[f"{farm.hosts[1].user}@{farm.hosts[1].address}"]
    silent = next(v for k, v in lines.items() if k.startswith("nobody@"))
    assert "│ no " in silent and "no answer" in silent
    assert "2 of 3 hosts failed" in out

    # by default a host whose environment matches runs one real task, compared with this machine's
    only_good = farm.hosts_file([good], name="good.txt")
    result = runner.invoke(app, ["hosts", "check", str(only_good), "--known-hosts", str(farm.known_hosts)],
                           env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert re.search(r"│\s*ok \(\d+\.\d s\)\s*│", result.output), result.output
    # a host that answers and matches, but whose workers cannot start, fails its trial with the reason
    # (planted: bt's worker module in the host's copy of bt made to exit, then put back)
    [worker] = (farm.hosts[0].home / ".cache" / "bt" / "code").glob("*/backtest/worker/__main__.py")
    kept = worker.read_bytes()
    try:
        worker.write_text("raise SystemExit('worker planted to fail')\n")
        result = runner.invoke(app, ["hosts", "check", str(only_good), "--known-hosts", str(farm.known_hosts)],
                               env={"COLUMNS": "250"})
    finally:
        worker.write_bytes(kept)
    text = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 1 and "1 of 1 hosts failed" in text and "worker planted to fail" in text, \
        result.output


def _owned_by(host: Host, *paths: Path) -> None:
    """Files planted by the test (root) belong to the host's user, as the host's own would."""
    for path in paths:
        for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
            shutil.chown(p, user=host.user)


def test_hosts_clean_frees_what_is_old_and_keeps_the_current_environment(farm: Farm, first: RemoteEnv) -> None:
    import os

    import typer

    from backtest.cli.hosts import app as hosts_app

    app = typer.Typer()
    app.add_typer(hosts_app, name="hosts")
    runner = CliRunner()
    host = farm.hosts[0]
    cache = host.home / ".cache" / "bt"
    old_env, old_code = cache / "envs" / "0ldenv", cache / "code" / "0ldcode"
    objects, dead = cache / "objects" / "ab", cache / "procs" / "999999999"
    for folder in (old_env, old_code, objects, dead.parent):
        folder.mkdir(parents=True, exist_ok=True)
    (old_env / "lib.bin").write_bytes(b"x" * 2_000_000)
    (old_code / "bt.py").write_text("old")
    (objects / ("ab" + "0" * 62)).write_bytes(b"y" * 1000)
    dead.write_text("{}")
    _owned_by(host, old_env, old_code, objects.parent, dead.parent)
    hosts = farm.hosts_file([host.line(key=farm.client_key)], name="clean.txt")
    args = ["hosts", "clean", str(hosts), "--known-hosts", str(farm.known_hosts)]

    live = dead.parent / str(os.getpid())  # a worker group record of a live process: refused
    live.write_text("{}")
    _owned_by(host, live)
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 1 and "worker group(s) run here" in result.output, result.output
    assert old_env.exists()
    live.unlink()

    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    freed = re.search(r"freed ([\d.]+) (MB|GB) on 1 host", result.output)
    assert freed and float(freed[1]) * (1000 if freed[2] == "GB" else 1) >= 2.0, result.output  # at least ours
    assert not old_env.exists() and not old_code.exists() and not objects.exists() and not dead.exists()
    assert (cache / "envs" / environment.env_key()).is_dir() and list((cache / "code").iterdir())
    check = runner.invoke(app, ["hosts", "check", str(hosts), "--known-hosts", str(farm.known_hosts), "--no-trial"],
                          env={"COLUMNS": "250"})
    assert check.exit_code == 0 and "match" in check.output, check.output

    other = farm.hosts[1]
    everything = farm.hosts_file([other.line(key=farm.client_key)], name="clean-all.txt")
    result = runner.invoke(app, ["hosts", "clean", str(everything), "--known-hosts", str(farm.known_hosts), "--all"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    left = other.home / ".cache" / "bt"
    assert not left.exists() or not any(left.iterdir())


def test_the_wheelhouse_holds_this_interpreters_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    """Venvs with the same pins but another pip (a stdlib venv's against virtualenv's) do not
    share a cached wheelhouse: the pip wheel in it is the one ``pip_pin()`` names."""
    from importlib import metadata

    pips = [w.name for w in environment.wheelhouse() if w.name.startswith("pip-")]
    assert pips == [f"pip-{metadata.version('pip')}-py3-none-any.whl"]
    mine = environment.wheelhouse_dir()
    monkeypatch.setattr(environment, "pip_pin", lambda: "pip==0.0.1")
    assert environment.wheelhouse_dir() != mine and environment.wheelhouse_dir().name.endswith("-0.0.1")


def test_a_launcher_that_fails_says_why_in_the_hosts_words(farm: Farm, conn1: Any) -> None:
    """The launcher's stderr is held back until its first line; when it fails before that line,
    the host's own error text is the message (it used to be dropped: 'env did not start: ')."""
    host = farm.hosts[0]
    fake = host.home / "broken-python"
    fake.write_text("#!/bin/sh\necho 'first line' >&2\necho 'cannot run here: disk quota exceeded' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(HostError, match=r"did not start: cannot run here: disk quota exceeded$"):
        open_stream(conn1, ["true"], python=str(fake))
    fake.write_text("#!/bin/sh\nexit 4\n")
    with pytest.raises(HostError, match=r"did not start: exit status 4, nothing on stderr$"):
        open_stream(conn1, ["true"], python=str(fake))


WARM_UP = "from backtest.worker.tuning import warm_up; warm_up()"


def test_kernels_compiled_on_a_host_survive_a_change_of_bt_elsewhere(farm: Farm, first: RemoteEnv, conn1: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    done = exec_command(conn1, first.command("-c", WARM_UP), timeout=600)  # compiles there, unless done already
    assert done.returncode == 0, done.stderr
    assert list((Path(first.code_dir) / "backtest" / "engine" / "__pycache__").glob("*simulate_nb*.nbi"))
    # bt changes outside its kernels: a new code key, so a new copy of bt on the host
    real = environment.code_key()
    monkeypatch.setattr(environment, "code_key", lambda: hashlib.sha256(b"elsewhere" + real.encode()).hexdigest())
    environment.fingerprint.cache_clear()
    try:
        env = bootstrap(conn1, spec_for(farm, farm.hosts[0]))
        assert env.installed and env.code_dir != first.code_dir
        marker = json.loads((Path(env.code_dir) / ".bt-ready").read_text())
        assert marker["kernels"] > 0, marker
        cache = Path(env.code_dir) / "backtest" / "engine" / "__pycache__"
        before = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.nbi")}
        start = time.perf_counter()
        done = exec_command(conn1, env.command("-c", WARM_UP), timeout=600)
        seconds = time.perf_counter() - start
        assert done.returncode == 0, done.stderr
        # numba rewrites a kernel's index only when it compiles one: none was
        assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*.nbi")} == before
        print(f"warm-up in a new copy of bt with the kernels carried over: {seconds:.2f} s")
    finally:
        monkeypatch.undo()
        environment.fingerprint.cache_clear()

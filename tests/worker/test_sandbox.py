"""The sandbox on local workers: each escape fails only its own task, with one clear line, and
leaves nothing running; ``--sandbox off`` lets the same strategy through (so each check can fail)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import duckdb
import pytest
from helpers import bt_in, processes_with, processes_with_env, write_strategy
from sandbox_escapes import ESCAPES

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="the sandbox is Linux's")


@pytest.fixture
def escape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # every process of these runs carries the mark (the sandbox keeps it: BT_SANDBOX_KEEP), and
    # the workers' private folders go to a temp folder of the test's own
    monkeypatch.setenv("BT_TEST_MARK", uuid.uuid4().hex)
    monkeypatch.setenv("BT_SANDBOX_KEEP", "BT_TEST_MARK")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    return write_strategy(tmp_path, ESCAPES, "escape.py")


def run(root: Path, strategy: Path, what: str, *extra: str, symbols: str = "AAA") -> tuple[dict, list[str]]:
    """One run of ``Escape`` with ``mode@arg``: its JSON summary and its failed tasks' errors."""
    mode, _, arg = what.partition("@")
    code, out, err = bt_in(root, "run", strategy, "--from", "2021", "--symbols", symbols, "-w", "1",
                           "--param", f"mode={mode}", *(["--param", f"arg={arg}"] if arg else []), "--json", *extra)
    assert code in (0, 1), err + out
    summary = json.loads(out.strip().splitlines()[-1])
    with duckdb.connect(str(root / "catalog.duckdb"), read_only=True) as con:
        errors = [r[0] for r in con.execute("SELECT error FROM run_tasks WHERE run_id = ? AND status = 'failed'",
                                            [summary["run_id"]]).fetchall()]
    return summary, errors


def nothing_left(tmp_path: Path) -> None:
    """No process of the test's runs is alive, and no worker's private folder is left."""
    mark = os.environ["BT_TEST_MARK"]
    deadline = time.monotonic() + 10
    while processes_with_env("BT_TEST_MARK", mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    me = os.getpid()
    assert [p for p in processes_with_env("BT_TEST_MARK", mark) if p != me] == []
    assert list((tmp_path / "tmp").iterdir()) == []
    from backtest.store.fsutil import process_alive
    from backtest.worker.sandbox import _pids_cgroup

    # where the workers' own cgroups were (root): none of a gone worker is left (a live worker's
    # is another bt's, running on this machine meanwhile)
    cgroups = _pids_cgroup()
    assert cgroups is None or [c for c in cgroups.glob("bt-worker-*")
                               if not process_alive(int(c.name.rsplit("-", 1)[1]))] == []


def test_network_is_refused_with_one_line(root: Path, escape: Path, tmp_path: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    got: list[bytes] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            got.append(conn.recv(100))
            conn.close()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        summary, errors = run(root, escape, f"net@127.0.0.1:{port}")
        assert summary["failed"] == 1 and summary["status"] == "failed"
        assert len(errors) == 1 and "\n" not in errors[0]
        assert "network access is disabled for strategies" in errors[0] and "--sandbox off" in errors[0]
        assert summary["sandbox"]["mode"] == "on"
        assert summary["sandbox"]["hosts"]["localhost"]["network"]
        assert got == []
        off, errors = run(root, escape, f"net@127.0.0.1:{port}", "--sandbox", "off")
        assert off["computed"] == 1 and errors == [] and off["sandbox"] == {"mode": "off"}, (off, errors)
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got == [b"escaped"]  # the same strategy gets through without the sandbox
    finally:
        server.close()
    nothing_left(tmp_path)


def test_files_outside_are_out_of_reach(root: Path, escape: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    key = home / ".ssh" / "id_rsa"
    key.write_text("-----BEGIN FAKE KEY-----\n")
    monkeypatch.setenv("HOME", str(home))
    outside = tmp_path / "escaped.txt"
    summary, errors = run(root, escape, f"read@{key}")
    assert summary["failed"] == 1
    assert f"the sandbox does not let strategies touch {key}" in errors[0] and "--sandbox off" in errors[0]
    summary, errors = run(root, escape, f"write@{outside}")
    assert summary["failed"] == 1 and str(outside) in errors[0]
    assert not outside.exists()
    for target in (root / "catalog.duckdb", root / "results" / "ab" / f"ab{'0' * 62}.res"):  # bt's own files too
        summary, errors = run(root, escape, f"write@{target}")
        assert summary["failed"] == 1 and str(target) in errors[0], errors
    # without the sandbox both go through: the key is read (its text in the task's log), the file written
    off, _ = run(root, escape, f"read@{key}", "--sandbox", "off")
    assert off["computed"] == 1
    code, out, _ = bt_in(root, "logs", off["run_id"])
    assert "BEGIN FAKE KEY" in out
    off, _ = run(root, escape, f"write@{outside}", "--sandbox", "off")
    assert off["computed"] == 1 and outside.read_text() == "escaped"
    nothing_left(tmp_path)


def test_scratch_is_writable_and_emptied_after_each_shard(root: Path, escape: Path, tmp_path: Path) -> None:
    summary, errors = run(root, escape, "scratch", symbols="AAA,BBB,CCC")  # 3 shards, one worker
    assert errors == [] and summary["computed"] == 3
    nothing_left(tmp_path)


def test_processes_die_with_their_shard(root: Path, escape: Path, tmp_path: Path) -> None:
    summary, errors = run(root, escape, "forks")
    assert summary["failed"] == 1
    assert "the sandbox allows a worker 128 processes at once" in errors[0], errors
    secs = str(900_000 + os.getpid() % 1000)
    summary, errors = run(root, escape, f"daemon@{secs}")
    assert errors == [] and summary["computed"] == 1  # the daemon started ...
    nothing_left(tmp_path)  # ... and was killed with its shard
    assert processes_with(f"sleep {secs}") == []


def test_what_a_killed_worker_started_dies_too(root: Path, escape: Path, tmp_path: Path) -> None:
    secs = str(700_000 + os.getpid() % 1000)
    summary, errors = run(root, escape, f"daemon-hang@{secs}", "--timeout", "2")
    assert summary["failed"] == 1 and "timeout" in errors[0].lower(), errors
    nothing_left(tmp_path)  # the fork server, a subreaper, killed each killed worker's daemon
    assert processes_with(f"sleep {secs}") == []


def test_memory_is_capped(root: Path, escape: Path, tmp_path: Path) -> None:
    summary, errors = run(root, escape, "memory")  # 20 GB with the default cap
    assert summary["failed"] == 1
    assert "ran out of its worker's memory cap" in errors[0] and "--max-memory" in errors[0]
    cap = summary["sandbox"]["hosts"]["localhost"]["memory"]
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert total * 0.8 / 1 < cap < total * 0.8 + 8 * 2**30  # one worker: 80 % of the machine, plus what it mapped
    summary, errors = run(root, escape, "memory", "--max-memory", "3G")
    assert "(3.0 GB)" in errors[0] and summary["sandbox"]["hosts"]["localhost"]["memory"] == 3 * 2**30
    summary, errors = run(root, escape, "ok", "--max-memory", "0")  # 0 lifts the cap
    assert errors == [] and summary["sandbox"]["hosts"]["localhost"]["memory"] is None
    nothing_left(tmp_path)


def test_environment_has_no_secrets(root: Path, escape: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "SSH_AUTH_SOCK"):
        monkeypatch.setenv(name, "s3cr3t")
    _, errors = run(root, escape, "env")
    assert "saw []; parent's environ leaked=None; HOME=" in errors[0]
    assert f"HOME={tmp_path / 'tmp'}/bt-sandbox-" in errors[0]
    _, errors = run(root, escape, "env", "--sandbox", "off")
    assert "saw ['AWS_SECRET_ACCESS_KEY', 'GITHUB_TOKEN', 'SSH_AUTH_SOCK']" in errors[0]
    nothing_left(tmp_path)


@pytest.mark.parametrize("where", ["AWS_SECRET_ACCESS_KEY", "BT_REMOTE_CACHE"])
def test_no_secret_in_a_worker_s_memory(root: Path, escape: Path, tmp_path: Path, where: str) -> None:
    """``bt run --force`` starts its workers' server before it plans: a strategy that reads all of
    its own memory finds no trace of the coordinator's secrets, neither one it never read nor one
    that its command line read (``--remote-cache`` from BT_REMOTE_CACHE: a URI may hold a key)."""
    import subprocess
    import sys

    tail = f"memory-{uuid.uuid4().hex}"
    secret = f"s3cr3t-{tail}"
    value = (tmp_path / "shared" / secret).as_uri() if where == "BT_REMOTE_CACHE" else secret
    env = dict(os.environ, **{where: value})

    def hits(*extra: str) -> str:
        done = subprocess.run([sys.executable, "-m", "backtest", "--data", str(root), "run", str(escape), "--from",
                               "2021", "--symbols", "AAA", "-w", "1", "--force", "--param", "mode=memscan",
                               "--param", f"arg={tail}", "--json", *extra],
                              capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
        assert done.returncode == 1, done.stderr + done.stdout
        with duckdb.connect(str(root / "catalog.duckdb"), read_only=True) as con:
            [(error,)] = con.execute("SELECT error FROM run_tasks WHERE run_id = ? AND status = 'failed'",
                                     [json.loads(done.stdout.strip().splitlines()[-1])["run_id"]]).fetchall()
        return error

    assert "memory hits=0" in hits()
    assert "memory hits=0" not in hits("--sandbox", "off")  # the scan does find it where it is
    nothing_left(tmp_path)


def test_same_bits_with_the_sandbox_on_and_off(root: Path, sma_path: Path, tmp_path: Path) -> None:
    from backtest.store.results import ResultStore

    args = ("--from", "2020", "--param", "fast=5,10", "--param", "slow=20,40", "-w", "2", "--json")
    code, out, err = bt_in(root, "run", sma_path, *args)
    assert code == 0, err
    on = json.loads(out)
    store = ResultStore(root)
    first = {k: store.read_bytes(k) for k in store.keys()}
    code, out, err = bt_in(root, "run", sma_path, *args, "--force", "--sandbox", "off")
    assert code == 0, err
    assert {k: store.read_bytes(k) for k in store.keys()} == first and len(first) == 12
    assert list((root / "results" / ".staging").iterdir()) == []  # each worker's staged files moved in, its folder gone
    with duckdb.connect(str(root / "catalog.duckdb"), read_only=True) as con:
        rows = dict(con.execute("SELECT run_id, sandbox FROM runs").fetchall())
    assert json.loads(rows[on["run_id"]])["mode"] == "on"
    assert json.loads(rows[on["run_id"]])["hosts"]["localhost"]["files"].startswith("Landlock")
    assert json.loads(rows[json.loads(out)["run_id"]]) == {"mode": "off"}


def test_bad_sandbox_options_are_refused(root: Path, sma_path: Path) -> None:
    code, out, err = bt_in(root, "run", sma_path, "--sandbox", "maybe")
    assert code == 2 and "maybe" in err
    code, out, err = bt_in(root, "run", sma_path, "--timeout", "0")
    assert code == 2 and "--timeout must be more than 0 seconds" in err + out
    code, out, err = bt_in(root, "run", sma_path, "--timeout", "-5")
    assert code == 2

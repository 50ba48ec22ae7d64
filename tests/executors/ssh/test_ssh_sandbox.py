"""The sandbox on a real SSH host (a user other than root: user and network namespaces, Landlock,
a process limit inside its user namespace): each escape fails only its task with one clear line,
nothing is left running on the host, `bt hosts check` says what the host has, and the same
strategy gets through with ``--sandbox off``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from helpers import write_strategy
from netns_farm import FARM_SECRET, Farm
from sandbox_escapes import ESCAPES
from sshhelpers import line, wait_no_workers

pytestmark = pytest.mark.ssh


def bt(root: Path, farm: Farm, *args: object) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, BT_KNOWN_HOSTS=str(farm.known_hosts), COLUMNS="250")
    return subprocess.run([sys.executable, "-m", "backtest", "--data", str(root), *map(str, args)],
                          capture_output=True, text=True, timeout=180, env=env, stdin=subprocess.DEVNULL)


def test_escapes_fail_on_an_ssh_host(ready_farm: Farm, farm_python: str, root: Path, tmp_path: Path) -> None:
    farm = ready_farm
    host = farm.hosts[0]
    hosts = farm.hosts_file([line(farm, host, farm_python)])
    strategy = write_strategy(tmp_path, ESCAPES, "escape.py")
    farm.exec_in(host, "sh", "-c", 'mkdir -p "$HOME/.ssh" && echo FAKE-KEY > "$HOME/.ssh/id_fake"')
    key = host.home / ".ssh" / "id_fake"
    outside = host.home / "escaped.txt"
    secs = str(800_000 + os.getpid() % 1000)

    def run(what: str, *extra: str) -> tuple[dict, list[str]]:
        mode, _, arg = what.partition("@")
        done = bt(root, farm, "run", strategy, "--from", "2021", "--symbols", "AAA", "--hosts", hosts,
                  "--param", f"mode={mode}", *(["--param", f"arg={arg}"] if arg else []), "--json", *extra)
        assert done.returncode in (0, 1), done.stderr + done.stdout
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        with duckdb.connect(str(root / "catalog.duckdb"), read_only=True) as con:
            errors = [r[0] for r in con.execute("SELECT error FROM run_tasks WHERE run_id = ? AND status = 'failed'",
                                                [summary["run_id"]]).fetchall()]
        return summary, errors

    summary, errors = run(f"net@{host.address}:22")  # the host's own sshd listens there
    assert summary["failed"] == 1 and "network access is disabled for strategies" in errors[0], (errors, summary)
    box = summary["sandbox"]["hosts"][f"{host.user}@{host.address}"]
    assert box["network"] == "user and network namespace" and box["files"].startswith("Landlock")
    assert box["processes"].startswith("≤ 128 (user namespace)") and box["memory"] > 2**30
    _, errors = run(f"read@{key}")
    assert f"the sandbox does not let strategies touch {key}" in errors[0], errors
    _, errors = run(f"write@{outside}")
    assert str(outside) in errors[0]
    _, errors = run("forks")
    assert "the sandbox allows a worker 128 processes at once" in errors[0], errors
    summary, errors = run(f"daemon@{secs}")
    assert summary["computed"] == 1, errors
    _, errors = run("memory")
    assert "ran out of its worker's memory cap" in errors[0], errors
    _, errors = run("env")
    assert "saw []; parent's environ leaked=None" in errors[0], errors
    summary, errors = run("scratch")
    assert errors == [], errors
    assert wait_no_workers([host]) == []
    left = host.user_processes()
    assert not any(secs in p or "sleep" in p for p in left), left
    assert not outside.exists()

    # without the sandbox the same strategy reads the key, writes the file, connects and sees the secret
    summary, errors = run(f"net@{host.address}:22", "--sandbox", "off")
    assert summary["computed"] == 1, errors
    summary, _ = run(f"write@{outside}", "--sandbox", "off")
    assert summary["computed"] == 1 and outside.exists()
    _, errors = run("env", "--sandbox", "off")
    assert f"saw ['{FARM_SECRET}']" in errors[0], errors

    check = bt(root, farm, "hosts", "check", hosts)
    assert check.returncode == 0, check.stdout + check.stderr
    assert re.search(rf"sandbox on {host.user}@{host.address}: network off \(user and network namespace\), "
                     r"files Landlock v\d+, processes ≤ 128 \(user namespace\) and reaped, memory ≤ [\d.]+ GB, "
                     r"environment allow-list", check.stdout.replace("\n", " ")), check.stdout

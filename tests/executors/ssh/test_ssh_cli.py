"""`bt run --hosts FILE` as a user runs it: a real `bt` process, a farm of real sshd hosts, then
`bt report`; a bad hosts file; a host with a changed key; Ctrl+C with no worker left on any host."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import helped_project
from netns_farm import Farm
from sshhelpers import line, wait_no_workers, workers_on

from backtest.catalog import Catalog
from backtest.store.results import ResultStore

pytestmark = pytest.mark.ssh
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def bt(root: Path, *args: object, env: dict[str, str] | None = None,
       timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "backtest", "--data", str(root), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def farm_env(farm: Farm) -> dict[str, str]:
    return dict(os.environ, BT_KNOWN_HOSTS=str(farm.known_hosts), COLUMNS="200")


def test_bt_run_hosts_end_to_end_then_report(ready_farm: Farm, farm_python: str, root: Path, sma_path: Path,
                                             tmp_path: Path) -> None:
    farm = ready_farm
    hosts = farm.hosts_file([line(farm, h, farm_python) for h in farm.hosts])
    args = ["run", sma_path, "--from", "2020", "--to", "2021", "--param", "fast=5,10", "--param", "slow=20,40",
            "--hosts", hosts]
    done = bt(root, *args, env=dict(farm_env(farm), FORCE_COLOR="1"))  # the live display, as in a terminal
    assert done.returncode == 0, done.stderr + done.stdout
    stdout, stderr = ANSI.sub("", done.stdout), ANSI.sub("", done.stderr)
    match = re.search(r"done run (\S+): 12 tasks, 12 computed, 0 cached, 0 failed", stdout)
    assert match, stdout
    run_id = match.group(1)
    for host in farm.hosts:  # the live display has a row per host: workers, busy, shards done, state
        assert re.search(rf"{host.user}@{host.address}\s+1\s+[01]\s+\d+\s+0\s+\w", stderr), stderr[-3000:]

    report = bt(root, "report", run_id, "--format", "json", env=farm_env(farm))
    assert report.returncode == 0, report.stderr
    rows = json.loads(report.stdout)
    assert len(rows) == 12 and all(r["status"] == "done" for r in rows)
    runs = bt(root, "runs", env=farm_env(farm))
    assert run_id in runs.stdout and "done" in runs.stdout

    again = bt(root, *args, "--json", env=farm_env(farm))  # everything cached: no host is even needed
    assert json.loads(again.stdout.strip().splitlines()[-1])["cached"] == 12
    assert len(ResultStore(root).keys()) == 12


def test_a_bad_hosts_file_names_every_bad_line_and_records_no_run(root: Path, sma_path: Path,
                                                                  tmp_path: Path) -> None:
    hosts = tmp_path / "farm.txt"
    hosts.write_text("good-host\nalice@box:22x\n# fine\nbob@old cores=0\n\nbox2 core=4\n")
    done = bt(root, "run", sma_path, "--from", "2020", "--to", "2021", "--hosts", hosts)
    assert done.returncode == 2, done.stderr
    err = " ".join(done.stderr.split())
    assert f"{hosts}: 3 bad lines" in err
    assert "line 2: bad port '22x'" in err
    assert "line 4: cores=0 is not a whole number ≥ 1" in err
    assert "line 6: unknown option 'core'. Did you mean \"cores\"?" in err
    assert "Traceback" not in done.stderr
    assert "no runs yet" in bt(root, "runs").stdout
    missing = bt(root, "run", sma_path, "--hosts", tmp_path / "nope.txt")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    url = bt(root, "run", sma_path, "--executor", "ssh://a,,b:0")
    assert url.returncode == 2 and "1 bad host: host 3: bad port" in url.stderr  # hosts, not lines, of a URL


def test_a_farm_whose_only_host_changed_its_key_ends_interrupted(ready_farm: Farm, farm_python: str,
                                                                   root: Path, sma_path: Path,
                                                                   tmp_path: Path) -> None:
    farm = ready_farm
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, key = Path(str(other) + ".pub").read_text().split()[:2]
    host = farm.hosts[0]
    known = tmp_path / "known_hosts"
    known.write_text(f"{host.address} {kind} {key}\n")
    hosts = farm.hosts_file([line(farm, host, farm_python)], name="one.txt")
    done = bt(root, "run", sma_path, "--from", "2020", "--to", "2021", "--hosts", hosts, "--accept-new-hosts",
              env=dict(farm_env(farm), BT_KNOWN_HOSTS=str(known)))
    assert done.returncode == 130, done.stdout + done.stderr
    out = " ".join(done.stdout.split())
    assert "interrupted run" in out and "every host failed" in out and "host key CHANGED" in out
    assert "run the same command again" in out


def test_a_host_set_aside_during_a_run_is_in_the_final_summary(ready_farm: Farm, farm_python: str,
                                                               root: Path, sma_path: Path, tmp_path: Path) -> None:
    """One host of two has a changed key: the run completes on the other, and the summary (plain
    output and --json) names the host that was set aside and why."""
    farm = ready_farm
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, key = Path(str(other) + ".pub").read_text().split()[:2]
    bad, good = farm.hosts[0], farm.hosts[1]
    known = tmp_path / "known_hosts"
    real = [ln for ln in farm.known_hosts.read_text().splitlines() if ln.startswith(good.address + " ")]
    known.write_text(f"{bad.address} {kind} {key}\n" + "\n".join(real) + "\n")
    hosts = farm.hosts_file([line(farm, bad, farm_python), line(farm, good, farm_python)], name="mixed.txt")
    env = dict(farm_env(farm), BT_KNOWN_HOSTS=str(known))
    done = bt(root, "run", sma_path, "--from", "2020", "--to", "2021", "--hosts", hosts, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    err = " ".join(done.stderr.split())
    assert f"warning: {bad.user}@{bad.address}: set aside: " in err and "host key CHANGED" in err, err
    as_json = bt(root, "run", sma_path, "--from", "2020", "--to", "2021", "--hosts", hosts, "--force", "--json",
                 env=env)
    summary = json.loads(as_json.stdout)
    assert summary["status"] == "done" and len(summary["set_aside"]) == 1
    assert summary["set_aside"][0].startswith(f"{bad.user}@{bad.address}: set aside: ")


def test_ctrl_c_stops_the_run_and_leaves_no_worker_on_any_host(ready_farm: Farm, farm_python: str,
                                                                root: Path, faulty: Path) -> None:
    farm = ready_farm
    hosts = farm.hosts_file([line(farm, h, farm_python) for h in farm.hosts])
    proc = subprocess.Popen(
        [sys.executable, "-m", "backtest", "--data", str(root), "run", str(faulty), "--from", "2020",
         "--to", "2021", "--param", "n=3:20", "--param", "mode=slow", "--hosts", str(hosts)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=farm_env(farm),
    )
    try:
        deadline = time.monotonic() + 60
        while not all(workers_on(h) for h in farm.hosts):
            assert proc.poll() is None and time.monotonic() < deadline, "workers never started"
            time.sleep(0.2)
        time.sleep(1.0)  # shards in flight on every host
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    assert "interrupted" in out
    assert wait_no_workers(farm.hosts, 5) == []
    assert not [p for h in farm.hosts for p in (h.home / ".cache" / "bt" / "procs").glob("*")]


def test_a_strategy_s_helper_modules_go_to_the_hosts_with_it(ready_farm: Farm, farm_python: str, root: Path,
                                                             tmp_path: Path) -> None:
    """The hosts import the helpers shipped with the strategy (its folder is not on them), and
    make the same keys and metrics as local workers."""
    farm = ready_farm
    path = helped_project(tmp_path / "proj")
    local = tmp_path / "local"
    shutil.copytree(root, local)
    hosts = farm.hosts_file([line(farm, h, farm_python) for h in farm.hosts])
    args = ["run", path, "--from", "2020", "--to", "2021", "--json"]
    remote = bt(root, *args, "--hosts", hosts, env=farm_env(farm))
    assert remote.returncode == 0, remote.stderr + remote.stdout
    here = bt(local, *args, env=farm_env(farm))
    assert here.returncode == 0, here.stderr + here.stdout
    ids = [json.loads(p.stdout.strip().splitlines()[-1])["run_id"] for p in (remote, here)]
    rows = [{r["key"]: (r["total_return"], r["n_trades"]) for r in Catalog(r_ / "catalog.duckdb").task_rows(i)}
            for r_, i in zip((root, local), ids, strict=True)]
    assert len(rows[0]) == 9 and rows[0] == rows[1]


def remote_and_local(farm: Farm, farm_python: str, root: Path, tmp_path: Path,
                     args: list[object]) -> tuple[dict, list[dict[str, bytes]]]:
    """``bt run ARGS --json`` on the farm (into ``root``) and locally (into a copy): the farm run's
    summary, and each store's result files."""
    local = tmp_path / "local"
    shutil.copytree(root, local)
    hosts = farm.hosts_file([line(farm, h, farm_python) for h in farm.hosts])
    remote = bt(root, *args, "--json", "--hosts", hosts, env=farm_env(farm))
    assert remote.returncode == 0, remote.stderr + remote.stdout
    here = bt(local, *args, "--json", env=farm_env(farm))
    assert here.returncode == 0, here.stderr + here.stdout
    files = [{k: ResultStore(r).read_bytes(k) for k in ResultStore(r).keys()} for r in (root, local)]
    return json.loads(remote.stdout.strip().splitlines()[-1]), files


def test_a_portfolio_run_on_the_hosts_gives_the_bits_of_a_local_run(ready_farm: Farm, farm_python: str, root: Path,
                                                                    tmp_path: Path) -> None:
    """Every member's partitions reach the hosts by their hashes; the results are the same bytes."""
    strategy = Path(__file__).resolve().parents[3] / "strategies" / "xs_momentum.py"
    summary, files = remote_and_local(ready_farm, farm_python, root, tmp_path, [
        "run", strategy, "--symbols", "AAA,BBB,CCC", "--from", "2020", "--to", "2021", "--param", "lookback=21,63",
        "--commission", "0.001"])
    assert summary["computed"] == 6
    assert len(files[0]) == 6 and files[0] == files[1]


def test_a_walk_forward_run_on_the_hosts_gives_the_bits_of_a_local_run(ready_farm: Farm, farm_python: str,
                                                                        root: Path, sma_path: Path,
                                                                        tmp_path: Path) -> None:
    """The second stage's shards go to the hosts as the folds are decided; every result is the
    same bytes as a local run's."""
    summary, files = remote_and_local(ready_farm, farm_python, root, tmp_path, [
        "run", sma_path, "--from", "2019", "--to", "2021", "--walk-forward", "train=1y,test=6m", "--param",
        "fast=5,10", "--param", "slow=20,40"])
    assert summary["computed"] == summary["tasks"] == 60
    assert len(files[0]) == 60 and files[0] == files[1]


def test_a_benchmark_run_on_the_hosts_gives_the_bits_of_a_local_run(ready_farm: Farm, farm_python: str,
                                                                    root: Path, sma_path: Path,
                                                                    tmp_path: Path) -> None:
    """The benchmark's partitions reach the hosts as the shard's own do; the results are the same
    bytes as a local run's."""
    summary, files = remote_and_local(ready_farm, farm_python, root, tmp_path, [
        "run", sma_path, "--symbols", "AAA,BBB", "--from", "2020", "--to", "2021", "--benchmark", "CCC",
        "--param", "fast=5,10", "--param", "slow=30"])
    assert summary["computed"] == summary["tasks"] == 4
    assert len(files[0]) == 4 and files[0] == files[1]

"""Interrupting a real `bt run` process: Ctrl+C and SIGKILL, then resuming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import processes_with_env

from backtest.store.results import ResultStore


def bt_proc(root: Path, *args: str, mark: str = "") -> subprocess.Popen[str]:
    env = dict(os.environ, BT_DATA=str(root), COLUMNS="120", BT_TEST_MARK=mark,
               BT_SANDBOX_KEEP="BT_TEST_MARK")  # sandboxed workers keep the mark
    return subprocess.Popen([sys.executable, "-m", "backtest", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def wait_for_results(root: Path, n: int, proc: subprocess.Popen[str], limit: float = 60) -> None:
    store = ResultStore(root)
    t0 = time.monotonic()
    while len(store.keys()) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < limit
        time.sleep(0.05)


def test_ctrl_c_keeps_finished_results_then_resume(root: Path, faulty: Path) -> None:
    args = ["run", str(faulty), "--from", "2020", "--param", "n=3:10", "--param", "mode=slow", "-w", "2"]
    proc = bt_proc(root, *args)
    wait_for_results(root, 2, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in out + err and "Traceback" not in err
    kept = set(ResultStore(root).keys())
    assert 2 <= len(kept) < 24
    resumed = bt_proc(root, *args, "--json")
    out, err = resumed.communicate(timeout=120)
    summary = json.loads(out)
    assert summary["status"] == "done" and summary["cached"] == len(kept)
    assert summary["computed"] == 24 - len(kept)
    runs = bt_proc(root, "runs")
    out, _ = runs.communicate(timeout=60)
    assert "interrupted" in out


def test_coordinator_sigkill_then_resume(root: Path, faulty: Path) -> None:
    args = ["run", str(faulty), "--from", "2020", "--param", "n=3:10", "--param", "mode=slow", "-w", "2"]
    mark = f"sigkill-{os.getpid()}-{time.monotonic_ns()}"  # this test's processes only, not another bt's
    proc = bt_proc(root, *args, mark=mark)
    wait_for_results(root, 3, proc)
    assert len(processes_with_env("BT_TEST_MARK", mark)) >= 3  # the coordinator, a fork server, workers
    proc.kill()
    proc.communicate(timeout=30)
    # the workers (and their fork server) notice that their coordinator is gone, and end
    deadline = time.monotonic() + 15
    while processes_with_env("BT_TEST_MARK", mark):
        assert time.monotonic() < deadline, "workers outlived their coordinator"
        time.sleep(0.1)
    # a worker may have been mid-write: its temporary file is never taken for a result, and
    # every stored result is whole
    kept = set(ResultStore(root).keys())
    assert kept and not [k for k in kept if k.startswith(".")]
    for k in kept:
        ResultStore(root).read(k)
    resumed = bt_proc(root, *args, "--json")
    out, err = resumed.communicate(timeout=120)
    summary = json.loads(out)
    assert summary["status"] == "done" and summary["computed"] + summary["cached"] == 24
    assert summary["cached"] >= len(kept)
    listing = bt_proc(root, "runs")
    out, _ = listing.communicate(timeout=60)
    assert "interrupted" in out  # the killed run is no longer shown as running


def test_real_process_bad_input_exit_codes(root: Path, tmp_path: Path) -> None:
    for args, needle in ((["run", str(tmp_path / "nope.py")], "does not exist"),
                         (["report", "nosuch"], 'unknown run "nosuch"'),
                         (["run", "x.py", "--fill", "sometime"], "sometime")):
        proc = bt_proc(root, *args)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (args, out, err)
        assert needle in err and "Traceback" not in err


def test_two_runs_at_once_and_a_report_during_a_run(root: Path, faulty: Path) -> None:
    """Two real `bt run` processes on one root, and `bt report`/`bt runs` while they run."""
    a = bt_proc(root, "run", str(faulty), "--from", "2020", "--param", "n=3:8", "--param", "mode=slow", "-w", "1",
                "--json")
    b = bt_proc(root, "run", str(faulty), "--from", "2020", "--param", "n=9:14", "--param", "mode=slow", "-w", "1",
                "--json")
    wait_for_results(root, 2, a)
    listing = bt_proc(root, "runs")
    out, err = listing.communicate(timeout=60)
    assert listing.returncode == 0, err
    assert out.count("running") >= 1
    rid = out.split("faulty-")[1].split()[0]
    report = bt_proc(root, "report", f"faulty-{rid}", "--format", "json")
    rep_out, rep_err = report.communicate(timeout=60)
    assert report.returncode == 0, rep_err
    assert isinstance(json.loads(rep_out), list)
    sa = json.loads(a.communicate(timeout=180)[0])
    sb = json.loads(b.communicate(timeout=180)[0])
    assert sa["status"] == sb["status"] == "done"
    assert sa["computed"] == sb["computed"] == 18
    assert len(ResultStore(root).keys()) == 36

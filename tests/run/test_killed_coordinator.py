"""A coordinator killed mid-run (SIGKILL: no cleanup of any kind): the next command brings the
run's record up to date with what its workers had stored, deletes what killed writers left, and a
rerun computes only the rest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import bt, write_strategy

from backtest.catalog import Catalog
from backtest.store.results import ResultStore

SLOW = """
import time

class Slow(Strategy):
    n = 1
    warmup = 0
    grid = {"n": list(range(1, 13))}

    def signals(self, bars):
        time.sleep(0.25)
        return np.where(bars.close > bars.open, 1.0, 0.0)
"""


def test_a_killed_coordinator_s_stored_results_are_recorded_and_reused(root: Path, tmp_path: Path) -> None:
    path = write_strategy(tmp_path, SLOW, "slow.py")
    args = [path, "--from", "2020", "--to", "2021", "--workers", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "backtest", "--data", str(root), "run", *map(str, args), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    store = ResultStore(root)
    deadline = time.monotonic() + 60
    while not store.keys() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert store.keys(), "no result was stored in a minute"
    os.kill(proc.pid, signal.SIGKILL)  # the coordinator only: its workers notice and stop
    proc.communicate(timeout=30)
    time.sleep(1.0)  # a worker may finish the task it was on
    settle = time.monotonic() + 20
    while time.monotonic() < settle:  # until the workers are gone and the store stops growing
        before = len(store.keys())
        time.sleep(0.6)
        if len(store.keys()) == before:
            break
    stored = set(store.keys())
    # what a killed writer leaves: a temporary file of a process that is gone (made here: no real
    # kill lands mid-write reliably), old enough not to be a live write
    leftover = store.dir / "00" / ".tmp-999999999-1-1"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"half a result")
    os.utime(leftover, (time.time() - 60, time.time() - 60))
    cat = Catalog(root / "catalog.duckdb")
    [run] = cat.runs(5)
    recorded_before = {r["key"] for r in cat.task_rows(run["run_id"]) if r["status"] == "done"}

    code, out, err = bt("--data", root, "runs")
    assert code == 0, err
    run = cat.run(run["run_id"])
    done = {r["key"] for r in cat.task_rows(run["run_id"]) if r["status"] == "done"}
    assert run["status"] == "interrupted" and done == stored and run["computed"] == len(stored)
    assert recorded_before <= done
    assert not leftover.exists()
    rows = {r["key"]: r for r in cat.task_rows(run["run_id"])}
    for key in stored:  # recorded with the metrics of the file
        assert rows[key]["total_return"] == store.read(key).metrics["total_return"]

    code, out, err = bt("--data", root, "run", *args, "--json")
    again = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and again["cached"] == len(stored) and again["computed"] == 36 - len(stored), again

"""A run whose coordinator was killed: record what its workers stored anyway.

Local workers store each result file before the coordinator hears of it, and the coordinator
records outcomes in batches. When the coordinator dies (``kill -9``, a crash, the machine's
power), results can be on disk that the catalog does not name as the run's. The next command that
finds the run dead (``bt run``, ``bt runs``, ``bt gc``) plans the run's tasks again from its job
and strategy as archived (the same keys), and records each intact stored result the run lacks as a
task it computed; and it deletes the temporary files that killed writers left in the store.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from backtest.catalog.staging import Recover
from backtest.store.fsutil import process_alive

#: A temporary file older than this whose writer process is gone is a killed write's leftover.
LEFTOVER_SECONDS = 10.0


def recovery(root: Path) -> Recover:
    """The ``Catalog`` hook that finds what a dead run stored under ``root`` but never recorded."""

    def recover(run: dict[str, Any], recorded: set[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        from backtest.catalog import result_row
        from backtest.errors import BtError, ResultError
        from backtest.plan import make_tasks
        from backtest.run.record import task_row
        from backtest.store.archive import run_job
        from backtest.store.results import ResultStore, decode, decode_metrics

        store = ResultStore(root)
        remove_leftovers(store)
        try:
            job, parts = run_job(root, run)
            tasks = [t for t in make_tasks(job, parts) if t.key not in recorded]
        except (BtError, OSError, ValueError, KeyError):
            return [], []  # its job or strategy is not archived: nothing can be planned again
        now = time.time()
        task_rows: list[dict[str, Any]] = []
        result_rows: list[dict[str, Any]] = []
        stored = store.existing([t.key for t in tasks])
        for t in tasks:
            if t.key not in stored:
                continue
            try:
                data = store.read_bytes(t.key)
                decode(data, "result", t.key)  # intact, and this task's
            except (BtError, ResultError, OSError):
                continue  # damaged: the next run sets it aside and computes it again
            header, metrics = decode_metrics(data)
            params = json.dumps(t.params, sort_keys=True)
            task_rows.append(task_row(t, params, "done", False, 1, None, None, "recovered", now))
            result_rows.append(result_row(header, metrics, now, params))
        return task_rows, result_rows

    return recover


def remove_leftovers(store: Any) -> list[Path]:
    """Delete the store's temporary files whose writer (a process of this machine, by the pid in
    the name) is gone, and that are older than ``LEFTOVER_SECONDS``. Returns what was deleted."""
    gone: list[Path] = []
    for path in store.leftovers(older_than=time.time() - LEFTOVER_SECONDS):
        pid = path.name.split("-")[1] if path.name.count("-") >= 2 else ""
        if pid.isdigit() and process_alive(int(pid)):
            continue
        try:
            path.unlink()
            gone.append(path)
        except OSError:
            pass
    return gone


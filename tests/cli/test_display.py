"""The live display of `bt run`, rendered to a string as a terminal would show it."""

from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console

from backtest.cli.jobs import _Display
from backtest.executors.base import WorkerStatus
from backtest.run import Progress


def test_progress_bar_and_host_rows_each_on_their_own_line() -> None:
    prep = SimpleNamespace(tasks=[object()] * 10, cached=[object()] * 2, executor_url="ssh://@farm.txt")
    p = Progress("r-1", total=10, cached=2, computed=5, failed=1)
    p.workers = [WorkerStatus("h1-0", "h1", "busy", 3, 0), WorkerStatus("h1-1", "h1", "idle", 2, 1),
                 WorkerStatus("h2-0", "h2", "lost", 0, 2)]
    p.notes = ["h2-0: worker stopped answering (no heartbeat for 10 s)"]
    out = io.StringIO()
    Console(file=out, width=100, force_terminal=False).print(_Display(prep).render(p))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("8/10 tasks 2 cached, 5 computed, 1 failed")
    assert set(lines[1].strip()) <= set("━╸╺ ")  # the bar alone
    assert lines[2].split() == ["host", "workers", "busy", "shards", "done", "failures", "state"]
    assert lines[3].split() == ["h1", "2", "1", "5", "1", "busy,", "idle"]
    assert lines[4].split() == ["h2", "1", "0", "0", "2", "lost"]
    assert "no heartbeat" in lines[5]

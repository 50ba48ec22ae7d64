"""A rerun plans from the stored grid without importing the strategy; an edit invalidates it."""

from __future__ import annotations

from pathlib import Path

from helpers import write_strategy

from backtest.run import RunRequest, prepare
from backtest.run.grid_cache import grid_cached as _grid_cached


def grid_cached(req: RunRequest, root: Path) -> bool:
    return _grid_cached(req, root, req.read_source())

COUNTING = """
import os
with open(os.environ["BT_TEST_IMPORTS"], "a") as fh:
    fh.write("x")

class Counting(Strategy):
    n = 5
    grid = {"n": [5, 6]}

    def signals(self, bars):
        return np.zeros(len(bars.close))
"""


def test_grid_is_reused_until_the_source_changes(root: Path, tmp_path: Path, monkeypatch) -> None:
    marker = tmp_path / "imports.txt"
    monkeypatch.setenv("BT_TEST_IMPORTS", str(marker))
    path = write_strategy(tmp_path, COUNTING, "counting.py")
    req = RunRequest(strategy=path, params=["n=5:7"], start="2020")
    assert not grid_cached(req, root)
    first = prepare(req, root)
    assert marker.read_text() == "x" and grid_cached(req, root)
    again = prepare(req, root)
    assert marker.read_text() == "x"  # not imported again
    assert [t.key for t in again.tasks] == [t.key for t in first.tasks]
    assert again.job.strategy == first.job.strategy
    import backtest.run.grid_cache as runner

    loads = []
    real = runner.load_source
    monkeypatch.setattr(runner, "load_source", lambda *a: loads.append(a) or real(*a))
    other = RunRequest(strategy=path, params=["n=5:8"], start="2020")
    assert len(prepare(other, root).tasks) == 12 and len(loads) == 1  # other specs: expanded anew
    path.write_text(path.read_text() + "\n# edited\n")
    edited = prepare(req, root)
    assert len(loads) == 2 and marker.read_text() == "xx"
    assert not {t.key for t in edited.tasks} & {t.key for t in first.tasks}

"""A real run to report on: the SMA strategy over three symbols' daily bars, with one failing task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import write_strategy
from typer.testing import CliRunner

from backtest.cli import _register, app

_register()
_runner = CliRunner()

# the SMA crossover on numpy, with a float parameter (stored as 1.0) and one task that fails
REPORTED = """
class Crossing(Strategy):
    fast = 5
    slow = 20
    scale = 1.0
    warmup = 60

    def signals(self, bars):
        if self.fast == 15 and self.slow == 50 and bars.symbol == "BBB":
            raise ValueError("no data for this one")
        c = bars.close
        f = np.convolve(c, np.ones(self.fast) / self.fast)[: len(c)]
        s = np.convolve(c, np.ones(self.slow) / self.slow)[: len(c)]
        return np.where(f > s, self.scale, -self.scale * 0.5)
"""


def bt(*args: object) -> tuple[int, str, str]:
    res = _runner.invoke(app, [*map(str, args)])
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory, market: Path) -> tuple[Path, str]:
    """(data root, run id) of a finished 3 symbols × 12 sets run (35 done, 1 failed)."""
    import shutil

    work = tmp_path_factory.mktemp("reported")
    root = work / "bt"
    shutil.copytree(market, root)
    strat = write_strategy(work, REPORTED, "crossing.py")
    code, out, err = bt("--data", root, "run", strat, "--from", "2019-06", "--to", "2021-12",
                        "--param", "fast=5,10,15", "--param", "slow=20,30,50,80", "--executor", "inline://", "--json")
    assert code == 1, err  # a run with a failed task exits 1
    summary = json.loads(out)
    assert summary["failed"] == 1 and summary["tasks"] == 36
    return root, summary["run_id"]

"""Execution settings as grid axes: one task per combination, each keyed as a plain run with that
one value keys it, indicators computed once for all of them, shown like parameters, bad input in
one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import bt_in as bt
from helpers import run_json, write_strategy

from backtest.engine import SimSettings, run_grid

COUNTED = """
CALLS = []


def mean(x, n):
    CALLS.append(n)
    out = np.full(x.shape, np.nan)
    out[n - 1:] = np.convolve(x, np.ones(n) / n, "valid")
    return out


class Counted(Strategy):
    n = 5

    def signals(self, bars):
        m = self.cached(mean, bars.close, self.n)
        return np.where(bars.close > m, 1.0, 0.0)
"""


def test_a_settings_axis_computes_each_indicator_once(tmp_path: Path) -> None:
    from helpers import synth_daily

    from backtest.engine.bars import Bars
    from backtest.strategy import load_strategy

    cls = load_strategy(write_strategy(tmp_path, COUNTED))
    ts, o, h, lo, c, v = synth_daily(3)
    bars = Bars("AAA", ts, o, h, lo, c, v)
    params = [{"n": n} for n in (5, 10) for _ in range(3)]
    each = [SimSettings(stop_loss=s) for _ in (5, 10) for s in (0.02, 0.05, 0.1)]
    outs = run_grid(cls, bars, params, each)
    import sys

    calls = sys.modules[cls.__module__].CALLS
    assert sorted(calls) == [5, 10]  # six tasks, two indicators, each computed once
    # and each task is the one its own settings give alone
    for p, s, out in zip(params, each, outs, strict=True):
        (alone,) = run_grid(cls, bars, [p], s)
        assert json.dumps(out.metrics) == json.dumps(alone.metrics)
        assert out.trades.tobytes() == alone.trades.tobytes()


def test_axes_make_tasks_keyed_like_plain_runs(root: Path, sma_path: Path) -> None:
    grid = run_json(root, sma_path, "--from", "2020", "--to", "2021", "-s", "AAA", "-p", "fast=5,10", "-p", "slow=30",
                    "--stop-loss", "0.02:0.06:0.02", "--trailing-stop", "0.05,0.1", "--commission", "0.001")
    assert grid["tasks"] == 2 * 3 * 2 and grid["computed"] == 12
    # one combination as plain settings: its task is found, not computed again
    plain = run_json(root, sma_path, "--from", "2020", "--to", "2021", "-s", "AAA", "-p", "fast=10", "-p", "slow=30",
                     "--stop-loss", "0.04", "--trailing-stop", "0.1", "--commission", "0.001")
    assert plain["tasks"] == 1 and plain["cached"] == 1
    # the report shows the axes like parameters, and --params selects by them
    code, out, err = bt(root, "report", grid["run_id"], "--format", "json")
    assert code == 0, err
    params = [r["params"] for r in json.loads(out)]
    assert {(p["stop_loss"], p["trailing_stop"]) for p in params} == {(s, t) for s in (0.02, 0.04, 0.06)
                                                                    for t in (0.05, 0.1)}
    assert all("commission" not in p for p in params)  # one value: a setting, not an axis
    code, out, err = bt(root, "report", grid["run_id"], "--params", "fast=10,stop_loss=0.04,trailing_stop=0.1",
                        "--trades")
    assert code == 0, err
    # the result files carry the strategy's parameters only: the same bytes whichever run made them
    code, out, err = bt(root, "verify", grid["run_id"])
    assert code == 0, err + out


@pytest.mark.parametrize("flag,value,says", [
    ("--stop-loss", "0.1:0.05:0.01", "--stop-loss 0.1:0.05:0.01 is empty"),
    ("--stop-loss", ",", "an empty value"),
    ("--stop-loss", "", "--stop-loss is empty"),
    ("--trailing-stop", "0", "trailing_stop must be a fraction"),
    ("--trailing-stop", "0.05,1", "trailing_stop must be a fraction"),
    ("--commission", "0.001,abc", 'cannot read --commission 0.001,abc: "abc" is not a number'),
])
def test_bad_axes_are_one_line(root: Path, sma_path: Path, flag: str, value: str, says: str) -> None:
    code, out, err = bt(root, "run", sma_path, "-s", "AAA", flag, value)
    assert code == 2
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_a_parameter_named_like_an_axis_is_refused(root: Path, tmp_path: Path) -> None:
    path = write_strategy(tmp_path, """
class Clash(Strategy):
    stop_loss = 0.5

    def signals(self, bars):
        return np.ones(len(bars))
""")
    code, out, err = bt(root, "run", path, "-s", "AAA", "--stop-loss", "0.02,0.04")
    assert code == 2 and "named stop_loss" in err, err
    # one value is a plain setting: no clash
    code, out, err = bt(root, "run", path, "-s", "AAA", "--stop-loss", "0.02", "--json")
    assert code == 0, err


def test_walk_forward_chooses_among_the_settings_too(root: Path, sma_path: Path) -> None:
    run = run_json(root, sma_path, "--from", "2019", "--to", "2021", "-s", "AAA", "-p", "fast=5,10", "-p", "slow=30",
                   "--stop-loss", "0.03,0.08", "--walk-forward", "train=1y,test=6m")
    code, out, err = bt(root, "report", run["run_id"], "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert rows and all(r["params"]["stop_loss"] in (0.03, 0.08) for r in rows)
    code, out, err = bt(root, "verify", run["run_id"])
    assert code == 0, err + out


def test_the_dry_run_counts_the_axes(root: Path, sma_path: Path) -> None:
    code, out, err = bt(root, "run", sma_path, "-s", "AAA", "-p", "fast=5,10", "-p", "slow=30", "--stop-loss", "0.02,0.04,0.06",
                        "--dry-run")
    assert code == 0, err
    assert "6 tasks" in out and "6 parameter sets (2 of the strategy × 3 of stop_loss)" in out, out

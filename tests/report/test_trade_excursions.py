"""``bt report RUN --trades`` shows each trade's MAE and MFE: result files do not keep them, the
task is computed again (checked against its stored result) and they follow from its bars."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from helpers import bt_in as bt
from helpers import run_json

from backtest.data import Store


def test_trades_show_excursions_from_the_bars(root: Path, sma_path: Path) -> None:
    run = run_json(root, sma_path, "--from", "2019", "--to", "2021", "-s", "AAA", "-p", "fast=5", "-p", "slow=30",
                   "-p", "short=true")
    code, out, err = bt(root, "report", run["run_id"], "--symbol", "AAA", "--trades", "--format", "json")
    assert code == 0, err
    trades = json.loads(out)
    bars = Store(root).read("AAA")
    times, high, low = bars.ts, bars.high, bars.low
    assert len(trades) > 5 and {t["side"] for t in trades} == {"long", "short"}
    for t in trades:
        first = np.searchsorted(times, np.datetime64(t["entry_time"].rstrip("Z"), "ns").astype(np.int64))
        last = np.searchsorted(times, np.datetime64(t["exit_time"].rstrip("Z"), "ns").astype(np.int64))
        top, bottom = high[first:last + 1].max(), low[first:last + 1].min()
        if t["side"] == "long":
            want = (bottom / t["entry_price"] - 1, top / t["entry_price"] - 1)
        else:
            want = (1 - top / t["entry_price"], 1 - bottom / t["entry_price"])
        assert (t["mae"], t["mfe"]) == want


def test_trades_of_changed_data_say_why_and_show_the_rest(root: Path, sma_path: Path) -> None:
    from helpers import synth_daily

    run = run_json(root, sma_path, "--from", "2019", "--to", "2021", "-s", "AAA", "-p", "fast=5", "-p", "slow=30")
    ts, o, h, lo, c, v = synth_daily(0)
    Store(root).import_arrays("AAA", ts, o * 2, h * 2, lo * 2, c * 2, v, replace=True)
    code, out, err = bt(root, "report", run["run_id"], "--symbol", "AAA", "--trades", "--format", "json")
    assert code == 0, err
    trades = json.loads(out)
    assert "MAE/MFE not shown" in err and "changed" in err
    assert trades and all(t["mae"] is None and t["mfe"] is None and t["pnl"] is not None for t in trades)

"""run_grid: outcomes per parameter set, shared indicators, bad strategy output, layouts, settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import loaded_by

from backtest.engine import (
    METRIC_NAMES,
    TRADE_DTYPE,
    SimSettings,
    TaskOutput,
    run_grid,
    trade_schema,
    trades_table,
)
from backtest.engine.indicators import sma_nb
from backtest.errors import UsageError
from backtest.strategy import Strategy, expand_grid

from .helpers import make_bars

CALLS: list[int] = []


def counted_sma(x, n):
    CALLS.append(n)
    return sma_nb(x, n)


class Cross(Strategy):
    fast = 5
    slow = 20
    grid = {"fast": range(5, 55, 5), "slow": range(20, 220, 20)}

    def constraint(self):
        return self.fast < self.slow

    def signals(self, bars):
        f = self.cached(counted_sma, bars.close, self.fast)
        s = self.cached(counted_sma, bars.close, self.slow)
        return np.where(f > s, 1.0, 0.0)


def test_indicators_are_computed_once_per_grid():
    CALLS.clear()
    grid = expand_grid(Cross)
    assert len(grid) == 90
    outs = run_grid(Cross, make_bars(400, start=200), grid, SimSettings())
    assert all(isinstance(o, TaskOutput) for o in outs)
    assert sorted(CALLS) == sorted({5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 60, 80, 100, 120, 140, 160, 180, 200})


class Picky(Strategy):
    mode = "ok"

    def signals(self, bars):
        n = len(bars)
        if self.mode == "raise":
            return helper_that_fails(bars.close)
        if self.mode == "short":
            return np.zeros(n - 1)
        if self.mode == "2d":
            return np.zeros((n, 2))
        if self.mode == "text":
            return "long"
        if self.mode == "range":
            out = np.zeros(n)
            out[-3] = 2.0
            return out
        if self.mode == "ints":
            return [1] * n  # any numbers per bar are fine
        return np.ones(n)


def helper_that_fails(close):
    return close / undefined_name  # noqa: F821


def test_each_entry_has_its_own_outcome_in_order():
    modes = ["ok", "raise", "short", "2d", "text", "range", "ints", "ok"]
    outs = run_grid(Picky, make_bars(100), [{"mode": m} for m in modes], SimSettings())
    kinds = [type(o).__name__ for o in outs]
    assert kinds == ["TaskOutput", "StrategyError", "StrategyError", "StrategyError", "StrategyError",
                     "StrategyError", "TaskOutput", "TaskOutput"]
    raised, short, two_d, text, out_of_range = outs[1:6]
    assert str(raised).startswith("Picky(mode='raise') on TEST: signals raised NameError: name 'undefined_name'")
    assert "test_run_grid.py:" in str(raised) and "\n" not in str(raised)
    details = raised.details
    assert "backtest/engine" not in details  # the engine's frames are trimmed
    assert "in signals" in details and "in helper_that_fails" in details and "undefined_name" in details
    assert "signals returned 99 values for 100 bars" in str(short)
    assert "shape (100, 2)" in str(two_d)
    assert "signals returned str" in str(text)
    assert "target at bar 97" in str(out_of_range) and "is 2.0" in str(out_of_range)


def test_output_layout():
    bars = make_bars(300, start=50)
    (out,) = run_grid(Cross, bars, [{"fast": 5, "slow": 20}], SimSettings(), want_equity=True)
    assert list(out.metrics) == list(METRIC_NAMES)
    assert out.trades.dtype == TRADE_DTYPE and len(out.trades) > 3
    assert out.equity.dtype == np.float64 and out.equity.shape == (250,)
    (no_equity,) = run_grid(Cross, bars, [{"fast": 5, "slow": 20}], SimSettings())
    assert no_equity.equity is None and no_equity.metrics == out.metrics


def test_trade_schema_and_table():
    import pyarrow as pa

    schema = trade_schema()
    assert schema.names == list(TRADE_DTYPE.names)
    assert schema.field("entry_time").type == pa.timestamp("ns", tz="UTC")
    assert schema.field("side").type == pa.int8() and schema.field("closed").type == pa.bool_()
    (out,) = run_grid(Cross, make_bars(300), [{"fast": 5, "slow": 20}], SimSettings())
    table = trades_table(out.trades)
    assert table.schema == schema and table.num_rows == len(out.trades)
    assert table.column("pnl").to_pylist() == out.trades["pnl"].tolist()
    assert table.column("entry_time").cast(pa.int64()).to_pylist() == out.trades["entry_time"].tolist()


def test_settings_canonical_and_validated():
    s = SimSettings(cash=100000, commission=0, fill="next-open")
    assert s.to_dict() == {"cash": 100000.0, "commission": 0.0, "fee": 0.0, "slippage": 0.0, "fill": "next_open",
                           "units": "fractional", "stop_loss": None, "take_profit": None}
    assert type(s.to_dict()["cash"]) is float and SimSettings.from_dict(s.to_dict()) == s
    bad = [
        ({"cash": 0}, "cash must be positive"),
        ({"commission": 5}, "commission must be a fraction in [0, 1)"),
        ({"commission": float("nan")}, "commission must be a finite number"),
        ({"fee": -1}, "fee must be zero or positive"),
        ({"slippage": 1.0}, "slippage must be a fraction"),
        ({"fill": "open"}, "fill must be next-open or close"),
        ({"units": "lots"}, "units must be fractional or integer"),
        ({"stop_loss": 1.5}, "stop_loss must be a fraction of the entry price in (0, 1)"),
        ({"take_profit": 0}, "take_profit must be a fraction of the entry price positive"),
        ({"cash": True}, "cash must be a finite number"),
    ]
    for kwargs, message in bad:
        with pytest.raises(UsageError) as err:
            SimSettings(**kwargs)
        assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UsageError, match="unknown simulation setting"):
        SimSettings.from_dict({"cash": 1.0, "margin": 2})
    # the leverage (portfolios) is left out of the dict, so of every key, at its default
    assert "leverage" not in SimSettings(leverage=1).to_dict()
    assert SimSettings(leverage=2).to_dict()["leverage"] == 2.0
    assert SimSettings.from_dict(SimSettings(leverage=2).to_dict()) == SimSettings(leverage=2)
    with pytest.raises(UsageError, match="leverage must be positive"):
        SimSettings(leverage=-1)


def test_import_engine_keeps_pandas_and_pyarrow_out():
    loaded, _ = loaded_by("import backtest.engine", ("pandas", "pyarrow"))
    assert loaded == []


SEEN: list[tuple[object, np.ndarray, int, np.ndarray]] = []


class WindowProbe(Strategy):
    """Asks ``cached`` for every window kernel and keeps what it got; trades an SMA cross."""

    fast = 5
    slow = 50

    def signals(self, bars):
        from backtest.engine.indicators import SUFFIX_INVARIANT
        from backtest.engine.signals import cross_target_nb

        for kernel in SUFFIX_INVARIANT:
            for n in (self.fast, self.slow):
                SEEN.append((kernel, bars.close, n, self.cached(kernel, bars.close, n)))
        return cross_target_nb(self.cached(sma_nb, bars.close, self.fast), self.cached(sma_nb, bars.close, self.slow),
                               True)


def test_warm_ups_cut_from_one_read_share_window_indicators_with_the_same_bits():
    """A worker reads a symbol's bars once for the widest warm-up and runs each warm-up's tasks on a
    slice of them; with ``SharedWindows`` a window kernel runs once on the whole read, and every
    slice gets exactly what the kernel gives on that slice alone: the same indicators, the same
    results as each warm-up run by itself."""
    from backtest.engine.run import SharedWindows
    from backtest.worker.shard import slice_bars

    bars = make_bars(2600, seed=5, start=900)
    shared = SharedWindows(bars)
    settings = SimSettings(commission=0.001)
    SEEN.clear()
    together, alone = [], []
    for slow in (40, 300, 700, 899):  # each warm-up a slice of its own
        grid = [{"fast": fast, "slow": slow} for fast in (2, 9, 30)]
        cut = slice_bars(bars, slow, ("p",))
        together += run_grid(WindowProbe, cut, grid, settings, shared=shared)
        copied = type(cut)(cut.symbol, cut.ts.copy(), cut.open.copy(), cut.high.copy(), cut.low.copy(),
                           cut.close.copy(), cut.volume.copy(), start=cut.start)
        alone += run_grid(WindowProbe, copied, grid, settings)
    for a, b in zip(together, alone, strict=True):
        assert json.dumps(a.metrics) == json.dumps(b.metrics) and a.trades.tobytes() == b.trades.tobytes()
    assert sum(len(o.trades) for o in together) > 50
    # every kernel ran once per window on the whole read, not once per slice
    assert len(shared.results) == 5 * len({2, 9, 30, 40, 300, 700, 899})
    assert len(SEEN) == 2 * 5 * 2 * 4 * 3
    for kernel, close, n, got in SEEN:
        assert got.tobytes() == kernel(np.ascontiguousarray(close), n).tobytes()
    # past its memory limit it keeps what it has and computes the rest on each slice: same results
    small = SharedWindows(bars, limit=20_000)  # full after one whole array (20 800 B)
    again = []
    for slow in (40, 300, 700, 899):
        grid = [{"fast": fast, "slow": slow} for fast in (2, 9, 30)]
        again += run_grid(WindowProbe, slice_bars(bars, slow, ("p",)), grid, settings, shared=small)
    assert len(small.results) == 1
    for a, b in zip(again, alone, strict=True):
        assert json.dumps(a.metrics) == json.dumps(b.metrics) and a.trades.tobytes() == b.trades.tobytes()

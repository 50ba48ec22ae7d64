"""The simulation kernel: the trading semantics' scenarios worked by hand, and agreement with the slow reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backtest.engine import METRIC_NAMES, SimSettings, TaskOutput, bars_per_year, run_grid
from backtest.engine.orders import excursions_nb
from backtest.errors import StrategyError
from backtest.strategy import Strategy

from . import reference as ref
from .helpers import bars_from, make_bars


class Fixed(Strategy):
    """Returns the target array given as the (non-parameter) class attribute ``_target``."""

    _target: np.ndarray = np.zeros(0)

    def signals(self, bars):
        return self._target


def run(bars, target, **settings) -> TaskOutput:
    strategy = type("T", (Fixed,), {"_target": np.asarray(target, dtype=float)})
    (out,) = run_grid(strategy, bars, [{}], SimSettings(**settings), want_equity=True)
    if isinstance(out, Exception):
        raise out
    return out


O4 = [10.0, 11.0, 12.0, 13.0]


def test_next_open_fill_all_in_with_commission():
    b = bars_from(O4, [11, 12, 13, 14], [9, 10, 11, 12], [10.5, 11.5, 12.5, 13.5])
    out = run(b, [1, 1, 0, 0], cash=1000.0, commission=0.01)
    (t,) = out.trades
    units = 1000 / (11 * 1.01)  # decided at bar 0's close, filled at bar 1's open, cash 0 after
    assert t["entry_index"] == 1 and t["exit_index"] == 3 and t["closed"]
    assert t["entry_price"] == 11.0 and t["exit_price"] == 13.0
    assert t["size"] == pytest.approx(units, rel=1e-14) and t["side"] == 1 and t["bars"] == 2
    fees = units * 11 * 0.01 + units * 13 * 0.01
    assert t["fees"] == pytest.approx(fees, rel=1e-12)
    assert t["pnl"] == pytest.approx(units * 2 - fees, rel=1e-12)
    assert t["return"] == pytest.approx(t["pnl"] / (units * 11), rel=1e-12)
    final = units * 13 * 0.99
    np.testing.assert_allclose(out.equity, [1000, units * 11.5, units * 12.5, final], rtol=1e-12)
    assert out.metrics["final_equity"] == pytest.approx(final, rel=1e-12)
    assert out.metrics["trades"] == 1 and out.metrics["win_rate"] == 1.0
    assert out.metrics["exposure"] == 0.5  # closes of bars 1 and 2 find the position


def test_fill_at_close():
    b = bars_from(O4, [11, 12, 13, 14], [9, 10, 11, 12], [10.5, 11.5, 12.5, 13.5])
    out = run(b, [1, 1, 0, 0], cash=1000.0, fill="close")
    (t,) = out.trades
    assert (t["entry_index"], t["exit_index"]) == (0, 2)
    assert (t["entry_price"], t["exit_price"]) == (10.5, 12.5)
    assert out.metrics["final_equity"] == pytest.approx(1000 / 10.5 * 12.5, rel=1e-12)


def test_slippage_and_fixed_fee():
    b = bars_from(O4, [11, 12, 13, 14], [9, 10, 11, 12], [10.5, 11.5, 12.5, 13.5])
    out = run(b, [1, 1, 0, 0], cash=1000.0, slippage=0.01, fee=2.0)
    (t,) = out.trades
    units = (1000 - 2.0) / (11 * 1.01)  # all in, net of the order's fee
    assert t["entry_price"] == pytest.approx(11 * 1.01) and t["exit_price"] == pytest.approx(13 * 0.99)
    assert t["size"] == pytest.approx(units, rel=1e-13)
    assert t["fees"] == pytest.approx(4.0)
    assert out.metrics["final_equity"] == pytest.approx(units * 13 * 0.99 - 2.0, rel=1e-12)


def test_integer_units_floor():
    b = bars_from(O4, [11, 12, 13, 14], [9, 10, 11, 12], [10.5, 11.5, 12.5, 13.5])
    out = run(b, [1, 1, 1, 1], cash=1000.0, commission=0.002, units="integer")
    (t,) = out.trades
    assert t["size"] == math.floor(1000 / (11 * 1.002)) == 90
    assert not t["closed"] and t["exit_index"] == 3 and t["exit_price"] == 13.5  # marked, not sold
    cash_left = 1000 - 90 * 11 * 1.002
    assert out.metrics["final_equity"] == pytest.approx(cash_left + 90 * 13.5, rel=1e-12)
    assert t["pnl"] == pytest.approx(90 * 2.5 - 90 * 11 * 0.002, rel=1e-12)


def test_short_reversal_is_two_orders():
    b = bars_from([10, 10, 8, 9, 9], [11] * 5, [7] * 5, [10, 9, 8, 9, 9])
    out = run(b, [-1, -1, 1, 1, 1], cash=1000.0, fee=1.0)
    short, long_ = out.trades
    units = 999 / 10
    assert short["side"] == -1 and short["size"] == pytest.approx(units)
    assert (short["entry_index"], short["exit_index"], short["exit_price"]) == (1, 3, 9.0)
    assert short["pnl"] == pytest.approx(units * 1 - 2.0)
    cash_after = 1000 - 1 + units * 10 - units * 9 - 1  # both fees paid, short covered at 9
    assert long_["side"] == 1 and long_["entry_index"] == 3
    assert long_["size"] == pytest.approx((cash_after - 1) / 9)
    assert not long_["closed"]


def test_targets_only_act_when_they_change_and_partial_sizes_are_fifo_lots():
    b = bars_from([10] * 6, [10] * 6, [10] * 6, [10] * 6)
    out = run(b, [0.5, 0.5, 1.0, 0.25, 0.25, 0.25], cash=1000.0)
    trades = out.trades
    # 50 units at bar 1, +50 at bar 3, then down to 25: the first lot is closed first (FIFO)
    assert [(t["entry_index"], t["exit_index"], round(t["size"], 9), t["closed"]) for t in trades] == [
        (1, 4, 50.0, True),
        (3, 4, 25.0, True),
        (3, 5, 25.0, False),
    ]


def test_stop_loss_in_bar_and_gap_and_tie():
    #       bar:  0     1     2      3
    b = bars_from([100, 100, 100, 100], [101, 101, 101, 101], [99, 99, 94, 99], [100, 100, 100, 100])
    out = run(b, [1, 1, 1, 1], stop_loss=0.05)
    (t,) = out.trades
    assert (t["entry_index"], t["exit_index"], t["exit_price"]) == (1, 2, 95.0)  # low 94 reached 95
    # the target is still 1 but unchanged: no re-entry after the stop
    assert out.metrics["trades"] == 1 and out.equity[-1] == pytest.approx(100_000 * 0.95)
    gap = bars_from([100, 100, 90, 90], [101, 101, 91, 91], [99, 99, 89, 89], [100, 100, 90, 90])
    (t,) = run(gap, [1, 1, 1, 1], stop_loss=0.05).trades
    assert (t["exit_index"], t["exit_price"]) == (2, 90.0)  # gapped through the stop: the open
    tie = bars_from([100, 100, 100, 100], [101, 101, 120, 101], [99, 99, 80, 99], [100] * 4)
    (t,) = run(tie, [1, 1, 1, 1], stop_loss=0.05, take_profit=0.1).trades
    assert t["exit_price"] == 95.0  # both touched in one bar: the stop-loss wins
    tp = bars_from([100, 100, 100, 100], [101, 101, 120, 101], [99, 99, 97, 99], [100] * 4)
    (t,) = run(tp, [1, 1, 1, 1], stop_loss=0.05, take_profit=0.1).trades
    assert t["exit_price"] == pytest.approx(110.0)


def test_short_stops_mirror():
    b = bars_from([100, 100, 100, 100], [101, 101, 106, 101], [99, 99, 99, 99], [100] * 4)
    (t,) = run(b, [-1, -1, -1, -1], stop_loss=0.05).trades
    assert (t["side"], t["exit_index"], t["exit_price"]) == (-1, 2, 105.0)
    b = bars_from([100, 100, 100, 100], [101, 101, 101, 101], [99, 99, 89, 99], [100] * 4)
    (t,) = run(b, [-1, -1, -1, -1], take_profit=0.1).trades
    assert t["exit_price"] == pytest.approx(90.0)


def test_warmup_targets_are_ignored_and_nan_allowed_there():
    b = make_bars(30, start=10)
    target = np.ones(30)
    target[:5] = np.nan
    out = run(b, target)
    assert out.trades[0]["entry_index"] == 11  # decided at the start bar, filled at the next open
    assert len(out.equity) == 20 and out.equity[0] == 100_000.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1.5, -2.0])
def test_bad_target_after_start_is_a_strategy_error(bad):
    b = make_bars(30, start=10)
    target = np.zeros(30)
    target[17] = bad
    with pytest.raises(StrategyError, match=r"target at bar 17 \(2020-01-18 00:00:00\)"):
        run(b, target)


def test_bankruptcy_closes_and_stops_trading():
    b = bars_from([10, 10, 30, 30, 5], [10, 10, 30, 30, 5], [10, 10, 30, 30, 5], [10, 10, 30, 30, 5])
    out = run(b, [-1, -1, -1, 1, 1])
    (t,) = out.trades
    assert t["exit_index"] == 2 and t["exit_price"] == 30.0  # equity < 0 at bar 2's close
    assert out.equity[-1] == out.equity[2] < 0
    assert out.metrics["final_equity"] == out.equity[-1]


SETTINGS = [
    {},
    {"commission": 0.001},
    {"commission": 0.002, "units": "integer", "cash": 10_000.0},
    {"commission": 0.001, "fee": 1.5, "slippage": 0.0005},
    {"fill": "close", "commission": 0.001},
    {"stop_loss": 0.02, "take_profit": 0.03, "commission": 0.001},
    {"stop_loss": 0.01, "fill": "close", "slippage": 0.001, "units": "integer"},
    {"trailing_stop": 0.02},
    {"trailing_stop": 0.015, "fill": "close", "commission": 0.001},
    {"trailing_stop": 0.02, "stop_loss": 0.01, "take_profit": 0.04, "slippage": 0.0005},
    {"trailing_stop": 0.01, "stop_loss": 0.03, "fill": "close", "units": "integer", "cash": 10_000.0},
    {"trailing_stop": 0.025, "take_profit": 0.02, "commission": 0.001, "fee": 1.0},
]


def random_targets(n, seed, start, rate=0.08):
    """Targets that move to a random level on a ``rate`` share of the bars (1.0: a new level on
    every bar, which overflows the kernel's first order buffers and takes its rerun path)."""
    rng = np.random.default_rng(seed)
    levels = np.array([-1.0, -0.5, 0.0, 0.0, 0.3, 1.0])
    changes = rng.random(n) < rate
    target = np.zeros(n)
    value = 0.0
    for t in range(n):
        if changes[t]:
            value = rng.choice(levels[levels != value]) if rate >= 1.0 else rng.choice(levels)
        target[t] = value
    target[: max(start - 3, 0)] = np.nan  # warm-up NaN is fine
    return target


def assert_trades_equal_reference(b, got_trades, want_trades):
    assert len(got_trades) == len(want_trades)
    for got, want in zip(got_trades, want_trades, strict=True):
        assert (got["entry_index"], got["exit_index"], got["side"], got["closed"], got["bars"]) == (
            want["entry_index"], want["exit_index"], want["side"], want["closed"], want["bars"])
        for name, key in [("size", "size"), ("entry_price", "entry_price"), ("exit_price", "exit_price"),
                          ("pnl", "pnl"), ("return", "ret"), ("fees", "fees"), ("mae", "mae"), ("mfe", "mfe")]:
            assert got[name] == pytest.approx(want[key], rel=1e-9, abs=1e-9), name
        assert got["entry_time"] == b.ts[want["entry_index"]] and got["exit_time"] == b.ts[want["exit_index"]]


def assert_excursions_agree(b, trades):
    """The loop's mae/mfe equal the post pass ``excursions_nb`` over the same trades."""
    again = trades.copy()
    again["mae"] = np.nan
    again["mfe"] = np.nan
    excursions_nb(again, b.high, b.low)
    np.testing.assert_array_equal(again["mae"], trades["mae"])
    np.testing.assert_array_equal(again["mfe"], trades["mfe"])


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize(("seed", "rate"), [(0, 0.08), (1, 0.08), (2, 1.0)])
def test_kernel_equals_reference(settings, seed, rate):
    b = make_bars(700, seed=seed, start=25)
    target = random_targets(700, seed, 25, rate)
    out = run(b, target, **settings)
    trades, equity = ref.simulate(b.open, b.high, b.low, b.close, target, start=25, **settings)
    np.testing.assert_allclose(out.equity, equity, rtol=1e-11)
    assert len(out.trades) == len(trades) > 5
    assert_trades_equal_reference(b, out.trades, trades)
    assert_excursions_agree(b, out.trades)
    exposed = ref.exposure(trades, 25, 700)
    expected = ref.metrics(equity, trades, settings.get("cash", 100_000.0), 252.0, b.close[25], b.close[-1],
                           ts=b.ts[25:], exposed=exposed)
    assert set(expected) == set(METRIC_NAMES)
    wrong = {name: (out.metrics[name], value) for name, value in expected.items()
             if out.metrics[name] != pytest.approx(value, rel=1e-9, nan_ok=True)}
    assert not wrong, f"metric: (engine, reference): {wrong}"
    # every cash flow belongs to a trade: their pnl adds up to the equity's change
    cash = settings.get("cash", 100_000.0)
    assert out.trades["pnl"].sum() == pytest.approx(out.metrics["final_equity"] - cash, rel=1e-9)


@pytest.mark.parametrize("fill", ["next_open", "close"])
def test_trailing_stops_fire_in_the_random_cases(fill):
    """The random trailing-stop cases exercise the stop: trades on both sides leave inside a bar."""
    b = make_bars(700, seed=0, start=25)
    t = run(b, random_targets(700, 0, 25), trailing_stop=0.02, fill=fill).trades
    at = t["exit_index"]
    stopped = t["closed"] & (t["exit_price"] != b.open[at]) & (t["exit_price"] != b.close[at])
    assert stopped.sum() >= 3 and set(t["side"][stopped].tolist()) == {-1, 1}


EXCURSION_CASES = [
    ({}, [1, 1, 0.5, 0.5, 1, 1, 0, -1, -1, -0.5, -1, 0]),
    ({"fill": "close"}, [1, 1, 0.5, 0.5, 1, 1, 0, -1, -1, -0.5, -1, 0]),
    ({"units": "integer", "cash": 10_000.0}, [1, 0.5, 1, 1, -1, -0.5, -1, -1, 0.5, 1, 0.5, 1]),
    ({"units": "integer", "cash": 10_000.0, "fill": "close"}, [1, 0.5, 1, 1, -1, -0.5, -1, -1, 0.5, 1, 0.5, 1]),
    ({"stop_loss": 0.01, "take_profit": 0.015}, [1, 1, 0.5, 0.5, 1, 1, 0, -1, -1, -0.5, -1, 0]),
    ({"trailing_stop": 0.01, "fill": "close"}, [1, 0.5, 1, 1, -1, -0.5, -1, -1, 0.5, 1, 0.5, 1]),
    ({"trailing_stop": 0.01, "slippage": 0.001}, [1, 0.5, 1, 1, -1, -0.5, -1, -1, 0.5, 1, 0.5, 1]),
]


@pytest.mark.parametrize(("settings", "pattern"), EXCURSION_CASES)
@pytest.mark.parametrize("seed", [0, 7])
def test_excursions_loop_equals_post_pass(settings, pattern, seed):
    """mae/mfe as the loop keeps them (run extremes folded into live lots at each order) equal the
    post pass over each trade's bars, through partial closes (1 → 0.5 → 1), flips and stops."""
    b = make_bars(240, seed=seed)
    target = np.repeat(np.asarray(pattern, dtype=float), 20)
    out = run(b, target, **settings)
    assert len(out.trades) >= 6
    assert_excursions_agree(b, out.trades)
    trades, _ = ref.simulate(b.open, b.high, b.low, b.close, target, **settings)
    assert_trades_equal_reference(b, out.trades, trades)
    t = out.trades
    assert (t["mae"] <= t["mfe"]).all()
    # the entry fill lies inside its bar's range (no slippage), so mae ≤ 0 ≤ mfe
    if not settings.get("slippage"):
        assert (t["mae"] <= 0).all() and (t["mfe"] >= 0).all()


def test_long_series_metrics_equal_reference():
    """Over 4096 bars the return statistics are merged block by block; they must not drift."""
    n = 20_000
    b = make_bars(n, seed=5, vol=0.002, step_ns=60 * 10**9)
    target = random_targets(n, 5, 0)
    target[np.isnan(target)] = 0.0
    out = run(b, target, commission=0.0005)
    trades, equity = ref.simulate(b.open, b.high, b.low, b.close, target, commission=0.0005)
    bpy = 252 * 20_000 / 14  # measured: 20 000 minute bars on 14 UTC days
    assert bars_per_year(b.ts) == bpy
    expected = ref.metrics(equity, trades, 100_000.0, bpy, b.close[0], b.close[-1])
    for name in ("sharpe", "sortino", "cagr", "max_drawdown", "max_drawdown_duration", "sqn"):
        assert out.metrics[name] == pytest.approx(expected[name], rel=1e-9), name


def test_exposure_counts_closes_in_a_position():
    b = make_bars(100, seed=3)
    target = np.zeros(100)
    target[10:30] = 1.0
    target[50:60] = -1.0
    out = run(b, target)
    assert out.metrics["exposure"] == pytest.approx(30 / 100)

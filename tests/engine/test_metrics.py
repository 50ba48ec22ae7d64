"""Metrics: definitions checked against empyrical-reloaded on the same returns, and annualisation."""

from __future__ import annotations

import empyrical
import numpy as np
import pytest

from backtest.engine import METRIC_NAMES, Bars, SimSettings, bars_per_year, run_grid
from backtest.strategy import Strategy

from . import reference as ref
from .helpers import DAY_NS, make_bars
from .test_simulation import random_targets, run


def test_metric_names():
    assert METRIC_NAMES == (
        "total_return", "cagr", "volatility", "sharpe", "sortino", "calmar", "max_drawdown",
        "max_drawdown_duration", "exposure", "trades", "win_rate", "best_trade", "worst_trade",
        "avg_trade", "profit_factor", "expectancy", "sqn", "final_equity", "buy_and_hold_return",
        "avg_drawdown", "avg_drawdown_duration", "max_drawdown_days", "omega", "kelly", "avg_win",
        "avg_loss", "max_consecutive_wins", "max_consecutive_losses", "max_trade_duration",
        "avg_trade_duration", "exposure_adjusted_return", "tail_ratio",
    )
    assert len(set(METRIC_NAMES)) == 32


class Noisy(Strategy):
    """Random target changes, seeded by the parameter."""

    seed = 0

    def signals(self, bars):
        rng = np.random.default_rng(self.seed)
        levels = rng.choice([-1.0, 0.0, 0.5, 1.0], size=len(bars) // 20 + 1)
        return np.repeat(levels, 20)[: len(bars)]


@pytest.mark.parametrize("step_ns,seed", [(DAY_NS, 0), (DAY_NS, 1), (300 * 10**9, 2)])
def test_equal_empyrical(step_ns, seed):
    bars = make_bars(3000, seed=seed, start=100, step_ns=step_ns)
    (out,) = run_grid(Noisy, bars, [{"seed": seed}], SimSettings(commission=0.001), want_equity=True)
    equity = out.equity
    returns = np.diff(np.concatenate([[100_000.0], equity])) / np.concatenate([[100_000.0], equity[:-1]])
    ann = bars_per_year(bars.ts)
    m = out.metrics
    rel = 1e-9
    assert m["sharpe"] == pytest.approx(empyrical.sharpe_ratio(returns, annualization=ann), rel=rel)
    assert m["sortino"] == pytest.approx(empyrical.sortino_ratio(returns, annualization=ann), rel=rel)
    assert m["max_drawdown"] == pytest.approx(empyrical.max_drawdown(returns), rel=rel)
    assert m["cagr"] == pytest.approx(empyrical.cagr(returns, annualization=ann), rel=rel)
    assert m["volatility"] == pytest.approx(empyrical.annual_volatility(returns, annualization=ann), rel=rel)
    assert m["calmar"] == pytest.approx(empyrical.calmar_ratio(returns, annualization=ann), rel=rel)
    assert m["total_return"] == pytest.approx(empyrical.cum_returns_final(returns), rel=rel)
    # omega_ratio's defaults: risk_free 0 and required_return 0, i.e. a per-bar threshold of
    # (1 + 0)^(1/252) − 1 = 0 whatever the annualisation
    assert empyrical.omega_ratio(returns) == empyrical.omega_ratio(returns, 0.0, 0.0, annualization=1)
    assert m["omega"] == pytest.approx(empyrical.omega_ratio(returns), rel=rel)
    assert m["omega"] == pytest.approx(empyrical.omega_ratio(returns, annualization=ann), rel=rel)
    # the tail ratio bit for bit, over the days' returns (its percentiles are selected exactly, and
    # interpolated as numpy does); for daily bars those are the bar returns
    daily = ref.daily_returns(equity, 100_000.0, bars.ts[bars.start:])
    assert (len(daily) == len(returns)) == (step_ns == DAY_NS) and len(daily) > 5
    assert m["tail_ratio"] == empyrical.tail_ratio(daily)
    assert m["tail_ratio"] == abs(np.percentile(daily, 95)) / abs(np.percentile(daily, 5))
    assert m["max_drawdown"] < 0 and 0 < m["exposure"] < 1


def test_annualisation():
    day = np.datetime64("2021-01-04", "ns").astype(np.int64)
    weekdays = np.array([d for d in range(400) if d % 7 < 5], dtype=np.int64)
    assert bars_per_year(day + weekdays * DAY_NS) == 252.0  # daily bars, weekends skipped
    assert bars_per_year(day + np.arange(300, dtype=np.int64) * DAY_NS) == 252.0  # every day
    assert bars_per_year(day + np.arange(100, dtype=np.int64) * 7 * DAY_NS) == 52.0
    assert bars_per_year(day + np.arange(40, dtype=np.int64) * 30 * DAY_NS) == 12.0
    minutes = (weekdays[:50, None] * DAY_NS + (14 * 60 + 30 + np.arange(390)) * 60 * 10**9).ravel()
    assert bars_per_year(day + minutes) == 252.0 * 390  # 390 one-minute bars a trading day
    assert bars_per_year(np.array([day])) == 252.0


def test_the_median_of_bar_spacings_is_numpy_s_bit_for_bit():
    from backtest.engine.metrics import median_of_ints

    rng = np.random.default_rng(7)
    for size in [1, 2, 3, 4, 5, 100, 101, 1_300, 4_096, 4_097]:
        for _ in range(20):
            # spacings as bars have them (many equal, a few gaps), and odd sums of two middles
            x = rng.choice([60, 86_400, 3 * 86_400, 7 * 86_400], size=size) * 10**9 + rng.integers(0, 3, size)
            got, want = median_of_ints(x), float(np.median(x))
            assert got == want and type(got) is float, (size, got, want)
    big = np.array([2**62 + 1, 2**62 + 2], dtype=np.int64)  # halves that float64 rounds as numpy does
    assert median_of_ints(big) == float(np.median(big))
    # the spacings bars_per_year takes (every one, or ~4 096 evenly spread) are the pairs it names
    for n in [2, 3, 4_097, 4_098, 8_193, 20_001]:
        ts = np.cumsum(rng.integers(1, 10**12, n)).astype(np.int64)
        picks = np.arange(1, n, max(1, (n - 1) // 4096))
        step = max(1, (n - 1) // 4096)
        assert np.array_equal(ts[1::step] - ts[:-1:step], ts[picks] - ts[picks - 1]), n


def test_flat_strategy_metrics():
    class Flat(Strategy):
        def signals(self, bars):
            return np.zeros(len(bars))

    (out,) = run_grid(Flat, make_bars(300), [{}], SimSettings())
    m = out.metrics
    assert m["total_return"] == 0.0 and m["final_equity"] == 100_000.0 and m["trades"] == 0
    assert m["max_drawdown"] == 0.0 and m["exposure"] == 0.0 and m["volatility"] == 0.0
    for name in ("sharpe", "sortino", "calmar", "win_rate", "best_trade", "profit_factor", "sqn"):
        assert np.isnan(m[name]), name
    assert all(isinstance(v, float) for v in m.values())


def test_profit_factor_without_losses_is_infinite():
    class Hold(Strategy):
        def signals(self, bars):
            return np.ones(len(bars))

    bars = make_bars(50)
    bars.close[-1] = bars.open[1] * 2  # certainly a winner
    (out,) = run_grid(Hold, bars, [{}], SimSettings())
    assert out.metrics["trades"] == 1 and out.metrics["profit_factor"] == np.inf
    assert np.isnan(out.metrics["sqn"])  # one trade has no spread


# ------------------------------------------------------------------ the metrics added to the first 19

NEW_METRICS = METRIC_NAMES[19:]


def weekday_bars(n: int, seed: int, start: int = 0) -> Bars:
    """``make_bars`` on weekdays only: calendar days and bars differ (weekends in drawdowns)."""
    b = make_bars(n, seed=seed, start=start)
    day0 = np.datetime64("2021-01-04", "ns").astype(np.int64)
    days = np.array([d for d in range(2 * n) if d % 7 < 5][:n], dtype=np.int64)
    return Bars(b.symbol, day0 + days * DAY_NS, b.open, b.high, b.low, b.close, b.volume, start=start)


def reference_metrics(b: Bars, target, **settings):
    trades, equity = ref.simulate(b.open, b.high, b.low, b.close, target, start=b.start, **settings)
    s = b.start
    return ref.metrics(equity, trades, settings.get("cash", 100_000.0), bars_per_year(b.ts), b.close[s],
                       b.close[-1], ts=b.ts[s:], exposed=ref.exposure(trades, s, len(b)))


def assert_metrics_equal(got: dict, want: dict, names=METRIC_NAMES, rel=1e-9):
    wrong = {name: (got[name], want[name]) for name in names
             if got[name] != pytest.approx(want[name], rel=rel, nan_ok=True)}
    assert not wrong, f"metric: (engine, reference): {wrong}"


@pytest.mark.parametrize(("seed", "settings"), [
    (0, {}),
    (1, {"commission": 0.001, "fill": "close"}),
    (2, {"stop_loss": 0.02, "take_profit": 0.03, "trailing_stop": 0.015}),
    (3, {"units": "integer", "cash": 5_000.0, "slippage": 0.001}),
    (4, {"trailing_stop": 0.03, "fill": "close", "fee": 2.0}),
])
def test_new_metrics_equal_reference(seed, settings):
    b = weekday_bars(600, seed, start=30)
    target = random_targets(600, seed, 30, rate=0.05)
    out = run(b, target, **settings)
    want = reference_metrics(b, target, **settings)
    assert set(want) == set(METRIC_NAMES)
    assert out.metrics["trades"] > 5 and out.metrics["avg_drawdown"] < 0
    assert_metrics_equal(out.metrics, want, NEW_METRICS)


def test_no_trades():
    b = weekday_bars(200, 0)
    out = run(b, np.zeros(200))
    m = out.metrics
    assert m["trades"] == 0 and m["max_consecutive_wins"] == 0.0 and m["max_consecutive_losses"] == 0.0
    assert m["max_drawdown_days"] == 0.0
    for name in ("avg_win", "avg_loss", "kelly", "avg_drawdown", "avg_drawdown_duration", "omega",
                 "max_trade_duration", "avg_trade_duration", "exposure_adjusted_return", "tail_ratio"):
        assert np.isnan(m[name]), name
    assert_metrics_equal(m, reference_metrics(b, np.zeros(200)))


def rising_bars(n: int) -> Bars:
    """Each bar opens at the previous close and closes 1 higher: a long never loses (whole
    numbers: leaving at an open gives exactly the equity of the close before)."""
    close = 101.0 + np.arange(n)
    open_ = close - 1.0
    ts = np.datetime64("2020-01-01", "ns").astype(np.int64) + np.arange(n, dtype=np.int64) * DAY_NS
    return Bars("UP", ts, open_, close.copy(), open_.copy(), close, np.ones(n))


@pytest.mark.parametrize("fill", ["next_open", "close"])
def test_only_winning_trades_and_no_drawdown(fill):
    b = rising_bars(60)
    target = np.tile(np.repeat([1.0, 0.0], 5), 6)
    out = run(b, target, fill=fill)
    m = out.metrics
    assert m["trades"] == 6 and m["win_rate"] == 1.0 and m["profit_factor"] == np.inf
    assert m["max_consecutive_wins"] == 6.0 and m["max_consecutive_losses"] == 0.0
    assert m["avg_win"] == pytest.approx(m["avg_trade"], rel=1e-12)
    assert np.isnan(m["avg_loss"]) and np.isnan(m["kelly"])
    assert m["max_drawdown"] == 0.0 and m["max_drawdown_days"] == 0.0
    assert np.isnan(m["avg_drawdown"]) and np.isnan(m["avg_drawdown_duration"])
    assert m["omega"] == np.inf  # gains, no losing bar
    assert m["max_trade_duration"] == m["avg_trade_duration"] == 5.0
    assert m["exposure"] == 0.5
    assert m["exposure_adjusted_return"] == pytest.approx(m["total_return"] / 0.5, rel=1e-12)
    assert_metrics_equal(m, reference_metrics(b, target, fill=fill))


def test_drawdown_periods_by_hand():
    # all in at bar 0's close, 10 units: equity 10 × close
    close = [100.0, 110.0, 99.0, 105.0, 120.0, 90.0, 95.0]
    day = np.datetime64("2020-01-01", "ns").astype(np.int64)
    ts = day + np.array([0, 1, 2, 3, 10, 11, 20], dtype=np.int64) * DAY_NS
    c = np.array(close)
    b = Bars("HAND", ts, c, c.copy(), c.copy(), c.copy(), np.ones(7))
    out = run(b, np.ones(7), cash=1000.0, fill="close")
    m = out.metrics
    np.testing.assert_allclose(out.equity, 10 * c, rtol=1e-15)
    # below the peak: bars 2–3 (peak 1100 at bar 1, regained at bar 4) and 5–6 (peak 1200 at bar 4, open)
    assert m["avg_drawdown"] == pytest.approx(((990 / 1100 - 1) + (900 / 1200 - 1)) / 2, rel=1e-12)
    assert m["avg_drawdown_duration"] == 2.0 and m["max_drawdown_duration"] == 2.0
    assert m["max_drawdown_days"] == 10.0  # bar 4 → bar 6 (the first period spans bar 1 → bar 4: 9 days)
    r = np.diff(10 * c) / (10 * c[:-1])
    r = np.concatenate([[0.0], r])  # bar 0: equity 1000 = the starting cash
    assert m["omega"] == pytest.approx(r[r > 0].sum() / -r[r < 0].sum(), rel=1e-12)
    # one trade, still open, a loss of 5 %
    assert m["trades"] == 1 and m["max_consecutive_losses"] == 1.0 and m["max_consecutive_wins"] == 0.0
    assert m["avg_loss"] == pytest.approx(-0.05, rel=1e-12) and np.isnan(m["avg_win"]) and np.isnan(m["kelly"])
    assert m["max_trade_duration"] == m["avg_trade_duration"] == 6.0
    assert m["exposure"] == 1.0
    assert m["exposure_adjusted_return"] == pytest.approx(-0.05, rel=1e-12)


def test_drawdown_from_the_starting_cash_by_hand():
    # commission takes equity below the starting cash at once: the period's peak bar is the first bar
    c = np.array([100.0, 100.0, 102.0, 97.0])
    day = np.datetime64("2020-01-01", "ns").astype(np.int64)
    ts = day + np.array([0, 5, 6, 7], dtype=np.int64) * DAY_NS
    b = Bars("HAND", ts, c, c.copy(), c.copy(), c.copy(), np.ones(4))
    out = run(b, np.ones(4), cash=1000.0, fill="close", commission=0.01)
    m = out.metrics
    units = 1000 / 1.01 / 100
    e = units * c
    assert m["avg_drawdown"] == pytest.approx(((e[0] / 1000 - 1) + (e[3] / e[2] - 1)) / 2, rel=1e-12)
    assert m["avg_drawdown_duration"] == 1.5
    assert m["max_drawdown_days"] == 6.0  # bar 0 (the starting cash's) → bar 2, which regains 1000


def round_trips(moves):
    """Bars and a target making one trade per price move: in at a close, out at the next close."""
    rows = []
    price = 100.0
    for mv in moves:
        rows += [price, price * mv]
        price *= mv
    c = np.array(rows)
    ts = np.datetime64("2020-01-01", "ns").astype(np.int64) + np.arange(len(c), dtype=np.int64) * DAY_NS
    return Bars("HAND", ts, c, c.copy(), c.copy(), c.copy(), np.ones(len(c))), np.tile([1.0, 0.0], len(moves))


def test_kelly_and_streaks_by_hand():
    # trades of +10 %, +10 %, −5 %, +10 %, −5 %, −5 %, −5 % (one unit's worth each time, no costs)
    moves = [1.1, 1.1, 0.95, 1.1, 0.95, 0.95, 0.95]
    b, target = round_trips(moves)
    m = run(b, target, fill="close").metrics
    assert m["trades"] == 7 and m["win_rate"] == pytest.approx(3 / 7)
    assert m["max_consecutive_wins"] == 2.0 and m["max_consecutive_losses"] == 3.0
    assert m["avg_win"] == pytest.approx(0.1, rel=1e-12) and m["avg_loss"] == pytest.approx(-0.05, rel=1e-12)
    assert m["max_trade_duration"] == m["avg_trade_duration"] == 1.0
    assert_metrics_equal(m, reference_metrics(b, target, fill="close"))
    # kelly = W − (1 − W)/R with R = mean winning pnl / |mean losing pnl| (pnl in cash: sizes compound)
    out = run(b, target, fill="close")
    pnl = out.trades["pnl"]
    ratio = pnl[pnl > 0].mean() / -pnl[pnl < 0].mean()
    assert m["kelly"] == pytest.approx(3 / 7 - (4 / 7) / ratio, rel=1e-12)


def test_a_zero_pnl_trade_ends_both_streaks():
    # win, flat, win, loss, flat, loss: no run longer than one
    moves = [1.1, 1.0, 1.1, 0.9, 1.0, 0.9]
    b, target = round_trips(moves)
    m = run(b, target, fill="close").metrics
    assert m["trades"] == 6 and m["max_consecutive_wins"] == 1.0 and m["max_consecutive_losses"] == 1.0
    assert_metrics_equal(m, reference_metrics(b, target, fill="close"))


# ------------------------------------------------------------------ the tail ratio's exact percentiles


def numpy_tail_ratio(returns):
    with np.errstate(divide="ignore", invalid="ignore"):
        return abs(np.percentile(returns, 95)) / abs(np.percentile(returns, 5)) if len(returns) else np.nan


def same(a, b):
    return (np.isnan(a) and np.isnan(b)) or a == b


def return_sets():
    """Returns of many shapes: fat-tailed, long and short, ties, one sign only, mostly zero, sorted,
    with an outlier, and each with zero returns counted apart (as the simulation counts its flat
    bars)."""
    rng = np.random.default_rng(7)
    for case in range(600):
        n = int(rng.integers(0, 70)) if case % 3 == 0 else int(rng.integers(70, 6000))
        r = rng.standard_t(3, n) * 1e-3
        kind = case % 6
        if kind == 1:
            r = np.round(r, 4)  # many ties
        elif kind == 2:
            r = np.abs(r)
        elif kind == 3:
            r = -np.abs(r)
        elif kind == 4:
            r[rng.random(n) < 0.9] = 0.0
        elif kind == 5:
            r = np.sort(r)[:: 1 if case % 4 else -1]  # sorted
            if n and case % 5 == 0:  # one outlier: equal-width buckets put nearly all in one
                r[n // 2] = 1e200 if case % 10 else -1e200
        zeros = int(rng.integers(0, 2 * n + 3)) if case % 2 else 0
        yield r, zeros


def test_tail_ratio_selection_equals_numpy_bit_for_bit():
    from backtest.engine.metrics import tail_ratio_nb

    checked = 0
    for r, zeros in return_sets():
        m = r.shape[0]
        everything = np.concatenate([r, np.zeros(zeros)])
        kept = r.copy()
        got = tail_ratio_nb(kept, m, zeros, np.empty(2 * m))
        assert np.array_equal(kept, r)  # the returns are left as they are
        want = numpy_tail_ratio(everything)
        assert same(got, want), (m, zeros, got, want)
        if len(everything):
            with np.errstate(divide="ignore", invalid="ignore"):
                assert same(got, empyrical.tail_ratio(everything))
        checked += 1
    assert checked == 600


def test_tail_ratio_edge_cases():
    from backtest.engine.metrics import tail_ratio_nb

    def tail(values, zeros=0):
        r = np.asarray(values, dtype=float)
        return tail_ratio_nb(r, r.shape[0], zeros, np.empty(2 * r.shape[0]))

    assert np.isnan(tail([]))  # no returns
    assert tail([0.01]) == 1.0 and tail([-0.02]) == 1.0  # one return: both percentiles are it
    assert np.isnan(tail([0.0])) and np.isnan(tail([], zeros=5))  # 0 / 0
    assert tail([0.03] * 3, zeros=40) == np.inf  # P5 is 0, P95 is not
    assert tail([-0.03] * 3, zeros=40) == 0.0  # P95 is 0, P5 is not
    for values, zeros in (([0.01], 40), ([0.01, -0.02], 1), ([0.5, -0.5, 0.25], 17)):
        everything = np.concatenate([values, np.zeros(zeros)])
        assert same(tail(values, zeros), numpy_tail_ratio(everything))


@pytest.mark.parametrize("fill", ["next_open", "close"])
def test_tail_ratio_of_a_run_equals_empyrical(fill):
    b = weekday_bars(3000, 5, start=40)
    target = random_targets(3000, 5, 40, rate=0.02)
    out = run(b, target, fill=fill)
    returns = np.diff(np.concatenate([[100_000.0], out.equity])) / np.concatenate([[100_000.0], out.equity[:-1]])
    assert 0.0 < out.metrics["exposure"] < 1.0 and np.count_nonzero(returns == 0.0) > 100  # flat stretches
    assert out.metrics["tail_ratio"] == empyrical.tail_ratio(returns) == numpy_tail_ratio(returns)


@pytest.mark.parametrize("fill", ["next_open", "close"])
@pytest.mark.parametrize("stops", [{}, {"stop_loss": 0.01, "trailing_stop": 0.02}, {"take_profit": 0.01}])
@pytest.mark.parametrize("rate", [0.03, 0.004])
def test_tail_ratio_of_intraday_bars_is_over_the_days_returns(fill, stops, rate):
    """Intraday bars: the equity at each UTC day's last bar makes the returns (days that end while
    flat, while holding, on a bar with an order or a stop; a first day begun mid-day), equal to
    numpy's and empyrical's bit for bit, and to the reference simulator's."""
    from backtest.engine.metrics import day_ends

    n = 6000
    b = make_bars(n, seed=7, start=37, step_ns=29 * 60 * 10**9, vol=0.004)  # days of 49 or 50 bars
    target = random_targets(n, 9, 37, rate=rate)
    out = run(b, target, fill=fill, **stops)
    ts = b.ts[b.start:]
    daily = ref.daily_returns(out.equity, 100_000.0, ts)
    assert 100 < len(daily) < n // 40 and len(day_ends(b.ts, b.start)) == len(daily)
    with np.errstate(divide="ignore", invalid="ignore"):  # P5 = 0 (take-profits, few changes): inf
        assert same(out.metrics["tail_ratio"], empyrical.tail_ratio(daily))
    assert same(out.metrics["tail_ratio"], numpy_tail_ratio(daily))
    if rate > 0.01:
        assert np.count_nonzero(daily == 0.0) > 0 and 0.0 < out.metrics["exposure"] < 1.0

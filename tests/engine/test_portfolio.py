"""Portfolio strategies: the kernel against a plain-Python loop of the same semantics, hand-worked
cases, the metrics' definitions, and the checks on what ``weights`` returns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backtest.engine import SimSettings, bars_per_year, run_grid
from backtest.engine.bars import Bars
from backtest.engine.portfolio_run import buy_and_hold
from backtest.engine.universe import Universe, align, ffill, period_ends
from backtest.errors import StrategyError
from backtest.strategy import PortfolioStrategy

from . import reference as ref

DAY = 86_400_000_000_000


def universe(o, c, start=0, symbols=None) -> Universe:
    o = np.asarray(o, dtype=float)
    c = np.asarray(c, dtype=float)
    n, m = c.shape
    ts = np.arange(n, dtype=np.int64) * DAY + 1_600_000_000 * 10**9
    syms = tuple(symbols or (f"S{j}" for j in range(m)))
    return Universe(syms, ts, o, np.fmax(o, c), np.fmin(o, c), c, np.ones((n, m)), start=start)


class Given(PortfolioStrategy):
    """Returns the weights given as the (non-parameter) class attribute ``_w``."""

    _w: np.ndarray = np.zeros((0, 0))

    def weights(self, u):
        return self._w


def run(u: Universe, w, **settings):
    strategy = type("W", (Given,), {"_w": w})
    (out,) = run_grid(strategy, u, [{}], SimSettings(**settings), want_equity=True)
    if isinstance(out, Exception):
        raise out
    return out


def random_case(seed: int, n: int = 300, m: int = 5, short: bool = True, late: bool = False, gaps: bool = False):
    rng = np.random.default_rng(seed)
    c = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, (n, m)), axis=0))
    o = c * np.exp(rng.normal(0, 0.006, (n, m)))
    w = rng.uniform(-1 if short else 0, 1, (n, m))
    w /= np.abs(w).sum(axis=1, keepdims=True)
    w[rng.uniform(size=(n, m)) < 0.25] = np.nan  # leave those positions as they are
    w[rng.uniform(size=n) < 0.4] = np.nan  # no orders at all on those bars
    if late:  # the last symbol starts trading a third of the way in
        o[: n // 3, -1] = c[: n // 3, -1] = np.nan
    if gaps:  # and the first has holes where it cannot trade and is valued at its last close
        hole = rng.uniform(size=n) < 0.05
        hole[:5] = False
        o[hole, 0] = c[hole, 0] = np.nan
    return o, c, w


CASES = {
    "long only, no costs": dict(short=False, settings={}),
    "long/short with costs": dict(short=True, settings=dict(commission=0.001, fee=2.0, slippage=0.0015)),
    "integer units": dict(short=True, settings=dict(commission=0.0005, units="integer", cash=20_000.0)),
    "fill at the close": dict(short=True, settings=dict(fill="close", slippage=0.001)),
    "a symbol trading later, another with gaps": dict(short=True, late=True, gaps=True,
                                                       settings=dict(commission=0.001, fee=1.0)),
    "warm-up rows never execute": dict(short=True, start=40, settings=dict(slippage=0.0005)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kernel_equals_the_reference_loop(case: str, seed: int) -> None:
    spec = CASES[case]
    o, c, w = random_case(seed, short=spec["short"], late=spec.get("late", False), gaps=spec.get("gaps", False))
    start = spec.get("start", 0)
    settings = SimSettings(**spec["settings"])
    out = run(universe(o, c, start), w, **spec["settings"])
    trades, equity, orders, skipped = ref.simulate_portfolio(
        o.tolist(), c.tolist(), w.tolist(), start, settings.cash, settings.commission, settings.fee,
        settings.slippage, settings.fill, settings.units)
    np.testing.assert_allclose(out.equity, equity, rtol=1e-12)
    assert out.metrics["orders"] == orders > 50
    assert len(out.trades) == len(trades)
    got = out.trades
    for k, t in enumerate(trades):
        assert got["symbol_index"][k] == t["symbol"] and got["entry_index"][k] == t["entry_index"]
        assert got["exit_index"][k] == t["exit_index"] and got["side"][k] == t["side"]
        assert bool(got["closed"][k]) == t["closed"]
        for field in ("size", "entry_price", "exit_price", "pnl", "fees"):
            assert got[field][k] == pytest.approx(t[field], rel=1e-9, abs=1e-7), (k, field)
    # the metrics, by their definitions over the reference's equity and trades
    u = universe(o, c, start)
    want = ref.metrics(equity, trades, settings.cash, bars_per_year(u.ts), 1.0, 1.0 + buy_and_hold(u))
    for name, value in want.items():
        if name == "exposure":
            continue
        assert out.metrics[name] == pytest.approx(value, rel=1e-9, nan_ok=True), name
    # every cash flow is some trade's: the PnL by symbol adds up to the account's
    assert out.trades["pnl"].sum() == pytest.approx(out.metrics["final_equity"] - settings.cash, rel=1e-9)
    if case.startswith("a symbol"):
        assert skipped > 0


def test_hand_worked_rebalance_sells_before_buys() -> None:
    # two symbols; all in A, then all in B: B's buy can only be paid once A is sold
    o = [[10.0, 20.0], [10.0, 20.0], [12.0, 20.0], [12.0, 20.0]]
    c = [[10.0, 20.0], [10.0, 20.0], [12.0, 20.0], [12.0, 20.0]]
    w = np.array([[1.0, 0.0], [np.nan, np.nan], [0.0, 1.0], [np.nan, np.nan]])
    out = run(universe(o, c), w, cash=1000.0, commission=0.01)
    a_units = 1000 / 1.01 / 10  # bought at bar 1's open, everything the cash can pay with commission
    sold = a_units * 12 * 0.99  # sold at bar 3's open
    b_units = sold / 1.01 / 20
    assert out.metrics["orders"] == 3
    ta, tb = out.trades
    assert ta["symbol_index"] == 0 and ta["size"] == pytest.approx(a_units, rel=1e-14) and ta["closed"]
    assert tb["symbol_index"] == 1 and tb["size"] == pytest.approx(b_units, rel=1e-14) and not tb["closed"]
    np.testing.assert_allclose(out.equity, [1000, a_units * 10, a_units * 12, b_units * 20], rtol=1e-12)
    assert out.trades["pnl"].sum() == pytest.approx(out.metrics["final_equity"] - 1000, rel=1e-12)


def test_value_is_computed_once_before_orders() -> None:
    # 50/50 at value V: both targets use the same V, so equal prices give equal units
    o = [[10.0, 10.0]] * 3
    out = run(universe(o, o), np.array([[0.5, 0.5]] * 3), cash=1000.0)
    assert out.trades["size"].tolist() == [50.0, 50.0] and out.metrics["orders"] == 2


def test_integer_units_round_toward_zero() -> None:
    o = [[30.0, 70.0]] * 3
    out = run(universe(o, o), np.array([[0.5, 0.5], [np.nan, np.nan], [np.nan, np.nan]]), cash=1000.0,
              units="integer")
    assert out.trades["size"].tolist() == [16.0, 7.0]  # 500/30 = 16.7 → 16, 500/70 = 7.1 → 7


def test_leverage_limit_names_the_bar_and_can_be_raised() -> None:
    o = [[10.0, 10.0]] * 4
    w = np.array([[0.5, 0.5], [0.8, -0.8], [0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(StrategyError, match=r"weights at bar 1 .* add up to 1\.6.*over the leverage limit 1"):
        run(universe(o, o), w)
    assert run(universe(o, o), w, leverage=2.0).metrics["orders"] > 0


@pytest.mark.parametrize(("weights", "match"), [
    (np.zeros((4, 3)), r"shape \(4, 3\) for 4 bars × 2 symbols"),
    (np.zeros(4), r"shape \(4,\)"),
    (np.array([["a", "b"]] * 4), "not numbers"),
    ("nope", "not numbers"),
    (np.array([[0.5, 0.5], [np.inf, 0.0], [0.5, 0.5], [0.5, 0.5]]), r"weight at bar 1 .* is infinite"),
])
def test_bad_weights_fail_the_task_with_one_line(weights, match: str) -> None:
    o = [[10.0, 10.0]] * 4
    with pytest.raises(StrategyError, match=match) as info:
        run(universe(o, o), weights)
    assert "\n" not in str(info.value)


def test_a_strategy_that_raises_fails_its_set_only() -> None:
    class Picky(PortfolioStrategy):
        k = 1

        def weights(self, u):
            if self.k == 2:
                raise ValueError("no k=2")
            return np.full((len(u.ts), len(u.symbols)), 0.5)

    o = [[10.0, 10.0]] * 4
    ok, bad = run_grid(Picky, universe(o, o), [{"k": 1}, {"k": 2}], SimSettings())
    assert not isinstance(ok, Exception) and ok.metrics["orders"] == 2
    assert isinstance(bad, StrategyError) and "ValueError: no k=2" in str(bad) and "Picky(k=2)" in str(bad)


def test_align_unions_timelines_and_counts_warmup_on_them() -> None:
    def bars(sym, days, price):
        ts = np.array(days, dtype=np.int64) * DAY
        x = np.full(len(days), float(price))
        return Bars(sym, ts, x, x, x, x + np.arange(len(days)), x)

    a = bars("A", [0, 1, 2, 3, 4, 5], 10)
    b = bars("B", [2, 3, 5, 6], 20)  # starts later, misses day 4
    u = align([a, b], start_ns=4 * DAY, warmup=2, label="ab")
    assert u.symbols == ("A", "B") and u.symbol == "ab"
    assert (u.ts // DAY).tolist() == [2, 3, 4, 5, 6] and u.start == 2
    assert np.isnan(u.close[2, 1]) and u.close[4, 1] == 23.0 and np.isnan(u.close[4, 0])
    assert ffill(u.close)[2, 1] == u.close[1, 1]


def test_period_ends_and_buy_and_hold() -> None:
    days = np.arange(np.datetime64("2021-01-28"), np.datetime64("2021-04-03")).astype("datetime64[ns]")
    ends = days[period_ends(days.astype(np.int64), "M")].astype("datetime64[D]").astype(str).tolist()
    assert ends == ["2021-01-31", "2021-02-28", "2021-03-31", "2021-04-02"]
    quarter = days[period_ends(days.astype(np.int64), "Q")].astype("datetime64[D]").astype(str).tolist()
    assert quarter == ["2021-03-31", "2021-04-02"]
    c = [[10.0, np.nan], [11.0, 40.0], [12.0, 50.0]]
    assert buy_and_hold(universe(c, c)) == pytest.approx((0.2 + 0.25) / 2)
    with pytest.raises(ValueError, match="period"):
        period_ends(days.astype(np.int64), "D")


def test_metrics_are_finite_and_named_like_one_symbol_tasks() -> None:
    from backtest.engine.records import METRIC_NAMES

    o, c, w = random_case(9)
    out = run(universe(o, c), w)
    assert tuple(out.metrics) == (*METRIC_NAMES, "orders")
    assert all(math.isfinite(v) for k, v in out.metrics.items() if k != "profit_factor")
    assert out.symbols == ("S0", "S1", "S2", "S3", "S4")

"""Metrics: definitions checked against empyrical-reloaded on the same returns, and annualisation."""

from __future__ import annotations

import empyrical
import numpy as np
import pytest

from backtest.engine import METRIC_NAMES, SimSettings, bars_per_year, run_grid
from backtest.strategy import Strategy

from .helpers import DAY_NS, make_bars


def test_metric_names_are_design_section_8():
    assert METRIC_NAMES == (
        "total_return", "cagr", "volatility", "sharpe", "sortino", "calmar", "max_drawdown",
        "max_drawdown_duration", "exposure", "trades", "win_rate", "best_trade", "worst_trade",
        "avg_trade", "profit_factor", "expectancy", "sqn", "final_equity", "buy_and_hold_return",
    )


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

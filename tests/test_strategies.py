"""The example strategies in strategies/, each on deterministic price paths with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from backtest.engine import Bars, SimSettings, run_grid
from backtest.strategy import expand_grid, load_strategy, warmup_bars

ROOT = Path(__file__).resolve().parents[1]


def bars(close, high=None, low=None) -> Bars:
    close = np.asarray(close, dtype=float)
    n = len(close)
    high = close if high is None else np.asarray(high, dtype=float)
    low = close if low is None else np.asarray(low, dtype=float)
    ts = np.datetime64("2022-01-03", "ns").astype(np.int64) + np.arange(n, dtype=np.int64) * 86_400 * 10**9
    return Bars("PATH", ts, close.copy(), high, low, close, np.ones(n))


def load(name):
    return load_strategy(ROOT / "strategies" / f"{name}.py")


def target(cls, b, **params):
    return np.asarray(cls(**params).signals(b), dtype=float)


def zigzag():
    """Down 20 bars, up 30, down 40, up 30: three clean trend changes."""
    return np.concatenate([np.linspace(105, 100, 20), np.linspace(100, 130, 31)[1:], np.linspace(130, 90, 41)[1:],
                           np.linspace(90, 120, 31)[1:]])


def test_sma_cross():
    cls = load("sma_cross")
    b = bars(zigzag())
    fast = pd.Series(b.close).rolling(3).mean().to_numpy()
    slow = pd.Series(b.close).rolling(10).mean().to_numpy()
    with np.errstate(invalid="ignore"):
        ups = np.flatnonzero((fast[:-1] < slow[:-1]) & (fast[1:] > slow[1:])) + 1
        downs = np.flatnonzero((fast[:-1] > slow[:-1]) & (fast[1:] < slow[1:])) + 1
    assert len(ups) == 2 and len(downs) == 1  # up in the first rise, down in the fall, up again
    long_only = target(cls, b, fast=3, slow=10, short=False)
    expected = np.zeros(len(b))
    expected[ups[0] : downs[0]] = 1.0
    expected[ups[1] :] = 1.0
    np.testing.assert_array_equal(long_only, expected)
    both = target(cls, b, fast=3, slow=10, short=True)
    expected[downs[0] : ups[1]] = -1.0
    np.testing.assert_array_equal(both, expected)
    (out,) = run_grid(cls, b, [{"fast": 3, "slow": 10, "short": True}], SimSettings())
    assert list(out.trades["side"]) == [1, -1, 1]
    assert list(out.trades["entry_index"]) == [ups[0] + 1, downs[0] + 1, ups[1] + 1]
    assert out.metrics["total_return"] > 0  # it caught both trends
    assert warmup_bars(cls, {"fast": 3, "slow": 10, "short": True}) == 10


def test_rsi_reversion():
    cls = load("rsi_reversion")
    rng = np.random.default_rng(0)
    up = 100 + np.cumsum(rng.normal(0.05, 0.3, 60))
    crash = up[-1] - np.arange(1, 11) * 2.0  # ten straight losses: RSI collapses
    recover = crash[-1] + np.arange(1, 21) * 1.0  # twenty straight gains: RSI climbs
    b = bars(np.concatenate([up, crash, recover]))
    got = target(cls, b, n=14)
    entry = int(np.argmax(got == 1.0))
    assert 60 < entry < 70 and got[entry - 1] == 0.0  # bought during the crash
    exit_ = entry + int(np.argmax(got[entry:] == 0.0))
    assert 70 < exit_ < 80 and np.all(got[entry:exit_] == 1.0)  # sold in the recovery
    assert not np.any(got == -1.0)
    both = target(cls, b, n=14, short=True)
    assert np.any(both[:60] == -1.0)  # the steady rise reads as overbought: short
    (out,) = run_grid(cls, b, [{"n": 14}], SimSettings())
    assert out.metrics["trades"] == 1
    assert (out.trades[0]["entry_index"], out.trades[0]["exit_index"]) == (entry + 1, exit_ + 1)


def test_bollinger_reversion():
    cls = load("bollinger_reversion")
    close = np.full(60, 100.0) + np.tile([0.5, -0.5], 30)
    close[40] = 95.0  # far below the lower band
    close[41:44] = [97.0, 99.0, 101.0]
    b = bars(close)
    got = target(cls, b, n=20, k=2.0)
    assert np.flatnonzero(np.diff(np.r_[0.0, got])).tolist() == [40, 43]  # in at the dip, out above the mean
    assert got[40] == 1.0 and got[43] == 0.0
    spike = close.copy()
    spike[40] = 105.0
    spike[41:44] = [103.0, 101.0, 99.0]
    assert target(cls, bars(spike), n=20, k=2.0, short=True)[40] == -1.0
    assert not np.any(target(cls, bars(spike), n=20, k=2.0) != 0.0)


def test_donchian_breakout():
    cls = load("donchian_breakout")
    rng = np.random.default_rng(1)
    range_bound = 100 + rng.uniform(-1, 1, 40)
    breakout = np.linspace(102, 110, 10)
    fall = np.linspace(109, 95, 10)
    close = np.concatenate([range_bound, breakout, fall])
    b = bars(close, high=close + 0.2, low=close - 0.2)
    got = target(cls, b, entry_n=20, exit_n=5)
    assert got[:40].max() == 0.0 and got[40] == 1.0  # first close above the 20-bar high
    exit_ = 40 + int(np.argmax(got[40:] == 0.0))
    assert 50 < exit_ < 55  # the first close below the previous 5-bar low in the fall
    assert warmup_bars(cls, {"entry_n": 20, "exit_n": 5, "short": False}) == 21
    assert {"entry_n": 20, "exit_n": 55, "short": False} not in expand_grid(cls, {"exit_n": [10, 55]})


def test_momentum():
    cls = load("momentum")
    close = np.concatenate([np.linspace(100, 120, 50), np.linspace(120, 90, 50)])
    b = bars(close)
    got = target(cls, b, lookback=10, threshold=0.0)
    assert np.all(got[:10] == 0.0)  # no trailing return yet
    assert np.all(got[10:50] == 1.0)
    assert np.all(got[60:] == 0.0)  # ten bars into the fall the trailing return is negative
    both = target(cls, b, lookback=10, threshold=0.0, short=True)
    assert np.all(both[60:] == -1.0)
    strict = target(cls, b, lookback=10, threshold=0.5)
    assert not np.any(strict)  # never moved 50 % in 10 bars


@pytest.mark.parametrize("name", ["sma_cross", "rsi_reversion", "bollinger_reversion", "donchian_breakout", "momentum"])
def test_every_example_runs_its_default_grid(name):
    cls = load(name)
    module_doc = cls.__bt_source__.split('"""')[1]
    assert "Parameters" in module_doc  # says what it trades and its parameters
    rng = np.random.default_rng(3)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 1500)))
    b = bars(close, high=close * 1.005, low=close * 0.995)
    combos = expand_grid(cls)
    outs = run_grid(cls, b, combos, SimSettings(commission=0.001))
    assert all(not isinstance(o, Exception) for o in outs), outs
    assert sum(o.metrics["trades"] for o in outs) > 0


# ---------------------------------------------------------------------------------- portfolios


def universe_of(closes, start="2022-01-03"):
    from backtest.engine.universe import Universe

    c = np.asarray(closes, dtype=float).T  # one row per bar
    n, m = c.shape
    ts = np.datetime64(start, "ns").astype(np.int64) + np.arange(n, dtype=np.int64) * 86_400 * 10**9
    return Universe(tuple(f"S{j}" for j in range(m)), ts, c, c, c, c, np.ones((n, m)))


def test_xs_momentum_holds_the_best_trailing_returns_from_each_month_end():
    cls = load("xs_momentum")
    days = 120
    steady = [100 * 1.001 ** np.arange(days), 100 * 1.003 ** np.arange(days), 100 * 0.999 ** np.arange(days),
              100 * 1.002 ** np.arange(days)]
    u = universe_of(steady)
    w = cls(lookback=20, top=2).weights(u)
    ends = np.flatnonzero(~np.isnan(w).all(axis=1))
    month_ends = pd.DatetimeIndex(u.ts).to_series().dt.is_month_end.to_numpy().nonzero()[0]
    assert set(ends) <= set(month_ends) | {days - 1} and len(ends) >= 3
    for i in ends:  # the two steadiest risers, half each; the others nothing
        np.testing.assert_array_equal(w[i], [0.0, 0.5, 0.0, 0.5])
    (out,) = run_grid(cls, u, [{"lookback": 20, "top": 2}], SimSettings())
    assert set(out.trades["symbol_index"]) == {1, 3} and out.metrics["total_return"] > 0
    assert warmup_bars(cls, {"lookback": 20, "top": 2}) == 20
    assert len(expand_grid(cls)) == 36


def test_inverse_vol_gives_calmer_symbols_more_and_adds_up_to_the_exposure():
    cls = load("inverse_vol")
    rng = np.random.default_rng(3)
    calm = 100 * np.exp(np.cumsum(rng.normal(0, 0.005, 200)))
    wild = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, 200)))
    u = universe_of([calm, wild])
    w = cls(lookback=21, exposure=0.9).weights(u)
    rows = w[~np.isnan(w).all(axis=1)]
    assert len(rows) >= 5
    np.testing.assert_allclose(rows.sum(axis=1), 0.9, rtol=1e-12)
    assert np.all(rows[:, 0] > 2 * rows[:, 1])  # about four times calmer: about four times the weight


def test_pairs_sells_the_spread_when_it_is_stretched_and_closes_when_it_returns():
    cls = load("pairs_zscore")
    n = 200
    base = 100 * np.exp(np.sin(np.arange(n) / 7) * 0.01)
    other = base.copy()
    other[120:130] *= 0.9  # B falls away from A for ten bars: the spread log(A) − log(B) jumps
    u = universe_of([base, other])
    w = cls(lookback=40, entry=2.0, exit=0.5, size=0.5).weights(u)
    acted = np.flatnonzero(~np.isnan(w).all(axis=1))
    assert acted[0] == 120 and w[120].tolist() == [-0.5, 0.5]  # short A, long B
    assert w[acted[1]].tolist() == [0.0, 0.0]  # closed once the spread is back
    (out,) = run_grid(cls, u, [{"lookback": 40, "entry": 2.0, "exit": 0.5, "size": 0.5}], SimSettings())
    assert out.metrics["orders"] == 4 and out.metrics["total_return"] > 0
    with pytest.raises(Exception, match="needs two symbols"):
        cls().weights(universe_of([base]))

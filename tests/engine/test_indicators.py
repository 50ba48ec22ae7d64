"""Every indicator kernel equals its slow reference (and pandas where the definition is the same)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backtest.engine import indicators as ind
from backtest.engine import signals as sig

from . import reference as ref
from .helpers import make_bars, random_walk

RTOL = 1e-10


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return random_walk(3000, seed=1)  # > 2 × 1024: exercises the periodic recompute


@pytest.fixture(scope="module")
def x_nan(x) -> np.ndarray:
    y = x.copy()
    y[:7] = np.nan  # leading warm-up NaN, as from another indicator
    y[1500] = np.nan
    return y


def close(a, b, rtol=RTOL):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=0, equal_nan=True)


@pytest.mark.parametrize("n", [1, 2, 5, 20, 200])
def test_sma(x, x_nan, n):
    close(ind.sma_nb(x, n), ref.sma(x, n))
    close(ind.sma_nb(x, n), pd.Series(x).rolling(n).mean().to_numpy())
    close(ind.sma_nb(x_nan, n), pd.Series(x_nan).rolling(n).mean().to_numpy())


def test_sma_shorter_than_window():
    assert np.isnan(ind.sma_nb(np.arange(3.0), 5)).all()
    with pytest.raises(ValueError):
        ind.sma_nb(np.arange(3.0), 0)


@pytest.mark.parametrize("n", [1, 3, 12, 50])
def test_ema(x, n):
    close(ind.ema_nb(x, n), ref.ema(x, n))
    close(ind.ema_nb(x, n), pd.Series(x).ewm(span=n, adjust=False, min_periods=n).mean().to_numpy())
    lead = x.copy()
    lead[:5] = np.nan  # leading NaN: seeded at the first value, as pandas does
    close(ind.ema_nb(lead, n), pd.Series(lead).ewm(span=n, adjust=False, min_periods=n).mean().to_numpy())


@pytest.mark.parametrize("n,ddof", [(2, 1), (10, 0), (10, 1), (250, 1)])
def test_rolling_std(x, x_nan, n, ddof):
    close(ind.rolling_std_nb(x, n, ddof), ref.rolling_std(x, n, ddof), rtol=1e-8)
    close(ind.rolling_std_nb(x, n, ddof), pd.Series(x).rolling(n).std(ddof=ddof).to_numpy(), rtol=1e-8)
    close(ind.rolling_std_nb(x_nan, n, ddof), pd.Series(x_nan).rolling(n).std(ddof=ddof).to_numpy(), rtol=1e-8)


def test_rolling_std_of_a_constant_is_zero():
    assert np.all(ind.rolling_std_nb(np.full(50, 3.3), 5, 1)[4:] == 0.0)


@pytest.mark.parametrize("n", [5, 20])
def test_zscore(x, n):
    close(ind.zscore_nb(x, n), ref.zscore(x, n), rtol=1e-8)
    r = pd.Series(x).rolling(n)
    close(ind.zscore_nb(x, n), ((pd.Series(x) - r.mean()) / r.std(ddof=0)).to_numpy(), rtol=1e-8)


def test_zscore_nan_where_flat():
    assert np.isnan(ind.zscore_nb(np.full(30, 2.0), 5)).all()


def test_bollinger(x):
    got = ind.bollinger_nb(x, 20, 2.0)
    for a, b in zip(got, ref.bollinger(x, 20, 2.0), strict=True):
        close(a, b, rtol=1e-9)
    r = pd.Series(x).rolling(20)
    close(got[1], (r.mean() + 2 * r.std(ddof=0)).to_numpy(), rtol=1e-9)


@pytest.mark.parametrize("n", [2, 14, 30])
def test_rsi(x, n):
    got = ind.rsi_nb(x, n)
    close(got, ref.rsi(x, n))
    assert np.isnan(got[:n]).all() and np.all((got[n:] >= 0) & (got[n:] <= 100))


def test_rsi_edges():
    assert ind.rsi_nb(np.arange(10.0), 3)[-1] == 100.0  # only gains
    assert ind.rsi_nb(np.full(10, 5.0), 3)[-1] == 50.0  # no change at all
    assert np.isnan(ind.rsi_nb(np.arange(3.0), 3)).all()


@pytest.mark.parametrize("n", [1, 14])
def test_atr(n):
    b = make_bars(800, seed=4)
    close(ind.atr_nb(b.high, b.low, b.close, n), ref.atr(b.high, b.low, b.close, n))


@pytest.mark.parametrize("n", [1, 3, 20, 300])
def test_highest_lowest(x, n):
    close(ind.highest_nb(x, n), ref.highest(x, n), rtol=0)
    close(ind.lowest_nb(x, n), ref.lowest(x, n), rtol=0)
    close(ind.highest_nb(x, n), pd.Series(x).rolling(n).max().to_numpy(), rtol=0)
    close(ind.lowest_nb(x, n), pd.Series(x).rolling(n).min().to_numpy(), rtol=0)


def test_crossover_is_strict():
    a = np.array([1.0, 2.0, 3.0, 3.0, 4.0, 2.0, 2.0, 1.0, np.nan, 5.0])
    b = np.array([2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 2.0, 2.0, 2.0, 2.0])
    # t=2: a went from == b to > b: touching is not a cross; t=4: from == to >: not a cross either.
    assert list(np.flatnonzero(sig.crossover_nb(a, b))) == []
    assert list(np.flatnonzero(sig.crossunder_nb(a, b))) == [5]
    a2 = np.array([1.0, 3.0, 1.0, 3.0])
    b2 = np.full(4, 2.0)
    assert list(np.flatnonzero(sig.crossover_nb(a2, b2))) == [1, 3]
    assert list(np.flatnonzero(sig.crossunder_nb(a2, b2))) == [2]


def test_cross_kernels_equal_reference(x):
    fast, slow = ind.sma_nb(x, 5), ind.sma_nb(x, 20)
    np.testing.assert_array_equal(sig.crossover_nb(fast, slow), ref.crossover(fast, slow))
    np.testing.assert_array_equal(sig.crossunder_nb(fast, slow), ref.crossunder(fast, slow))
    for short in (False, True):
        np.testing.assert_array_equal(sig.cross_target_nb(fast, slow, short), ref.cross_target(fast, slow, short))


def test_events_target_equals_reference():
    rng = np.random.default_rng(7)
    events = [rng.random(400) < 0.1 for _ in range(4)]
    np.testing.assert_array_equal(sig.events_target_nb(*events), ref.events_target(*events))


def test_events_target_rules():
    t, f = True, False
    le = np.array([t, f, f, t, f, f])
    lx = np.array([f, f, f, t, f, f])
    se = np.array([f, t, f, f, f, f])
    sx = np.array([f, f, t, f, f, t])
    # long; reversed by the short entry; short exit -> flat; exit+entry same bar -> long; stays long
    assert list(sig.events_target_nb(le, lx, se, sx)) == [1.0, -1.0, 0.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("kernel", sorted(ind.SUFFIX_INVARIANT, key=lambda k: k.__name__), ids=lambda k: k.__name__)
def test_window_kernels_give_a_suffix_the_same_bits(kernel):
    """``f(x[k:], n)`` is ``f(x, n)[k:]`` bit for bit past its first ``n − 1`` values, whatever the
    NaN, ties or length (beyond ``RECOMPUTE``): what lets every warm-up share one computation."""
    rng = np.random.default_rng(7)
    checked = 0
    for trial in range(24):
        size = int(rng.integers(2, 3 * ind.RECOMPUTE))
        x = random_walk(size, seed=trial)
        if trial % 2:
            x[rng.integers(0, size, size // 40 + 1)] = np.nan
        if trial % 3 == 0:
            x = np.round(x)  # equal values: which of them a max or a sum takes first
        n = int(rng.integers(2, min(size, ind.RECOMPUTE + 300) + 1))
        whole = kernel(x, n)
        for k in (1, *rng.integers(1, size, 4)):
            want = whole[k:].copy()
            want[: n - 1] = np.nan
            got = kernel(np.ascontiguousarray(x[k:]), n)
            assert got.tobytes() == want.tobytes(), (size, n, k)
            checked += int(np.isfinite(got).sum())
    assert checked > 10_000  # real values compared, not only NaN

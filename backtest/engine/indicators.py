"""Indicator kernels: numba functions over float64 arrays, one output value per input bar.

Every kernel returns NaN where its window is not yet full. Each docstring names the slow, obvious
reference in ``tests/engine/reference.py`` that the kernel must equal (and pandas where the
definition is the same); ``tests/engine/test_indicators.py`` asserts both.

Rolling sums are updated incrementally and recomputed from the window every ``RECOMPUTE`` bars, so
rounding cannot drift over millions of bars; the result is still deterministic (same inputs, same
bits).
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Bars between two fresh sums of a rolling window (``sma_nb``)
RECOMPUTE = 1024


@njit(cache=True)
def sma_nb(x: np.ndarray, n: int) -> np.ndarray:
    """Simple moving average of the last ``n`` values (this bar included).

    NaN until ``n`` values are seen and wherever the window holds a NaN.
    Reference: ``reference.sma`` (``np.mean`` of each window); pandas ``Series.rolling(n).mean()``.

    Each value depends only on its window and on its distance from the array's last value: the
    window is summed afresh at every ``RECOMPUTE``-th bar counted back from the end, and the bars
    before it are reached by sliding that sum backwards. So ``sma_nb(x[k:], n)`` equals
    ``sma_nb(x, n)[k:]`` bit for bit wherever the former is not NaN, which lets tasks that see
    different warm-ups of the same bars share one computation (see ``SUFFIX_INVARIANT``).
    """
    if n < 1:
        raise ValueError("sma_nb: n must be >= 1")
    size = x.shape[0]
    out = np.full(size, np.nan)
    anchor = size - 1
    while anchor >= n - 1:
        low = max(anchor - RECOMPUTE + 1, n - 1)
        total = 0.0  # the window ending at ``anchor``, summed afresh
        nans = 0
        for j in range(anchor - n + 1, anchor + 1):
            if np.isnan(x[j]):
                nans += 1
            else:
                total += x[j]
        # then slide the window [i-n+1, i] one bar back at a time: drop x[i], take in x[i-n]
        for i in range(anchor, low, -1):
            if nans == 0:
                out[i] = total / n
            v = x[i]
            w = x[i - n]
            if np.isnan(v) or np.isnan(w):
                if np.isnan(v):
                    nans -= 1
                else:
                    total -= v
                if np.isnan(w):
                    nans += 1
                else:
                    total += w
            else:
                total = total - v + w
        if nans == 0:
            out[low] = total / n
        anchor -= RECOMPUTE
    return out


@njit(cache=True)
def ema_nb(x: np.ndarray, n: int) -> np.ndarray:
    """Exponential moving average, alpha = 2/(n+1), seeded with the first non-NaN value:
    ``e = x0; e = e + alpha·(x − e)``. NaN for the first ``n − 1`` values after the seed and where
    ``x`` is NaN (the state is kept across a NaN).

    Reference: ``reference.ema``; pandas ``Series.ewm(span=n, adjust=False, min_periods=n).mean()``.
    """
    if n < 1:
        raise ValueError("ema_nb: n must be >= 1")
    size = x.shape[0]
    out = np.full(size, np.nan)
    alpha = 2.0 / (n + 1.0)
    e = np.nan
    seen = 0
    for i in range(size):
        v = x[i]
        if np.isnan(v):
            continue
        if seen == 0:
            e = v
        else:
            e = e + alpha * (v - e)
        seen += 1
        if seen >= n:
            out[i] = e
    return out


@njit(cache=True)
def rolling_mean_std_nb(x: np.ndarray, n: int, ddof: int) -> tuple[np.ndarray, np.ndarray]:
    """Rolling mean and standard deviation (``ddof`` 0: population, 1: sample) of the last ``n``
    values. NaN while the window is short or holds a NaN.

    The deviations are summed over each window around that window's mean (O(n) per bar): sliding
    sums of squares lose most digits when the spread is small next to the level.
    Reference: ``reference.rolling_std``; pandas ``rolling(n).mean()`` / ``rolling(n).std(ddof=ddof)``.
    """
    if n < 1 or n - ddof < 1:
        raise ValueError("rolling_mean_std_nb: need n >= 1 and n - ddof >= 1")
    size = x.shape[0]
    mean = sma_nb(x, n)
    std = np.full(size, np.nan)
    for i in range(n - 1, size):
        m = mean[i]
        if np.isnan(m):
            continue
        ss = 0.0
        for j in range(i - n + 1, i + 1):
            d = x[j] - m
            ss += d * d
        std[i] = np.sqrt(ss / (n - ddof))
    return mean, std


@njit(cache=True)
def rolling_std_nb(x: np.ndarray, n: int, ddof: int = 1) -> np.ndarray:
    """Rolling standard deviation; see ``rolling_mean_std_nb`` (pandas' default ddof=1)."""
    return rolling_mean_std_nb(x, n, ddof)[1]


@njit(cache=True)
def zscore_nb(x: np.ndarray, n: int) -> np.ndarray:
    """(x − rolling mean) / rolling population std (ddof 0) over ``n`` bars; NaN where the std is 0.

    Reference: ``reference.zscore``; pandas ``(x − r.mean()) / r.std(ddof=0)`` with ``r = rolling(n)``.
    """
    mean, std = rolling_mean_std_nb(x, n, 0)
    out = np.full(x.shape[0], np.nan)
    for i in range(x.shape[0]):
        if std[i] > 0.0:
            out[i] = (x[i] - mean[i]) / std[i]
    return out


@njit(cache=True)
def bollinger_nb(x: np.ndarray, n: int, k: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bollinger bands ``(middle, upper, lower)``: rolling mean ± k · rolling population std (ddof 0).

    Reference: ``reference.bollinger``; pandas ``r.mean() ± k·r.std(ddof=0)``.
    """
    mean, std = rolling_mean_std_nb(x, n, 0)
    return mean, mean + k * std, mean - k * std


@njit(cache=True)
def rsi_nb(x: np.ndarray, n: int) -> np.ndarray:
    """Wilder's RSI in [0, 100]. Average gain/loss start as the simple mean of the first ``n``
    changes (first value at index ``n``), then ``avg = (avg·(n−1) + change)/n``. RSI is
    ``100 − 100/(1 + gain/loss)``; 100 when the average loss is 0, 50 when both are 0.
    ``x`` must be free of NaN.

    Reference: ``reference.rsi`` (the same recursion written out with Python floats).
    """
    if n < 1:
        raise ValueError("rsi_nb: n must be >= 1")
    size = x.shape[0]
    out = np.full(size, np.nan)
    if size <= n:
        return out
    gain = 0.0
    loss = 0.0
    for i in range(1, n + 1):
        d = x[i] - x[i - 1]
        gain += max(d, 0.0)
        loss += max(-d, 0.0)
    gain /= n
    loss /= n
    for i in range(n, size):
        if i > n:
            d = x[i] - x[i - 1]
            gain = (gain * (n - 1) + max(d, 0.0)) / n
            loss = (loss * (n - 1) + max(-d, 0.0)) / n
        if loss == 0.0:
            out[i] = 100.0 if gain > 0.0 else 50.0
        else:
            out[i] = 100.0 - 100.0 / (1.0 + gain / loss)
    return out


@njit(cache=True)
def atr_nb(high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int) -> np.ndarray:
    """Wilder's average true range. TR[t] = max(h−l, |h−c[t−1]|, |l−c[t−1]|) for t ≥ 1; ATR[n] is
    the mean of TR[1..n], then ``atr = (atr·(n−1) + TR)/n``. NaN before index ``n``.

    Reference: ``reference.atr``.
    """
    if n < 1:
        raise ValueError("atr_nb: n must be >= 1")
    size = close.shape[0]
    out = np.full(size, np.nan)
    if size <= n:
        return out
    atr = 0.0
    for i in range(1, size):
        tr = max(high[i] - low[i], abs(high[i] - close[i - 1]), abs(low[i] - close[i - 1]))
        if i < n:
            atr += tr
        elif i == n:
            atr = (atr + tr) / n
            out[i] = atr
        else:
            atr = (atr * (n - 1) + tr) / n
            out[i] = atr
    return out


@njit(cache=True)
def _rolling_extreme_nb(x: np.ndarray, n: int, sign: float) -> np.ndarray:
    # Monotonic deque of indices: O(1) amortised per bar; sign=+1 for max, -1 for min.
    size = x.shape[0]
    out = np.full(size, np.nan)
    dq = np.empty(size, dtype=np.int64)
    head = 0
    tail = 0
    for i in range(size):
        v = sign * x[i]
        while tail > head and sign * x[dq[tail - 1]] <= v:
            tail -= 1
        dq[tail] = i
        tail += 1
        if dq[head] <= i - n:
            head += 1
        if i >= n - 1:
            out[i] = x[dq[head]]
    return out


@njit(cache=True)
def highest_nb(x: np.ndarray, n: int) -> np.ndarray:
    """Highest value of the last ``n`` bars (this bar included); the upper Donchian channel when
    applied to ``high``. ``x`` must be free of NaN.

    Reference: ``reference.highest`` (``max`` of each window); pandas ``rolling(n).max()``.
    """
    if n < 1:
        raise ValueError("highest_nb: n must be >= 1")
    return _rolling_extreme_nb(x, n, 1.0)


@njit(cache=True)
def lowest_nb(x: np.ndarray, n: int) -> np.ndarray:
    """Lowest value of the last ``n`` bars (this bar included); the lower Donchian channel when
    applied to ``low``. ``x`` must be free of NaN.

    Reference: ``reference.lowest`` (``min`` of each window); pandas ``rolling(n).min()``.
    """
    if n < 1:
        raise ValueError("lowest_nb: n must be >= 1")
    return _rolling_extreme_nb(x, n, -1.0)


#: Kernels ``f(x, n)`` whose value at a bar depends only on the ``n`` values ending there (and, for
#: ``sma_nb``, on the distance to the array's end), so that ``f(x[k:], n)`` equals ``f(x, n)[k:]``
#: bit for bit past its first ``n − 1`` values (NaN): ``Strategy.cached`` computes them once on a
#: shard's longest bars for every warm-up cut from them (``engine.run.SharedWindows``).
#: ``tests/engine/test_indicators.py`` checks the property for each.
SUFFIX_INVARIANT = frozenset({sma_nb, rolling_std_nb, zscore_nb, highest_nb, lowest_nb})

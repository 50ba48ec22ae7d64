"""Deterministic bars for engine tests."""

from __future__ import annotations

import numpy as np

from backtest.engine import Bars

DAY_NS = 86_400 * 10**9


def random_walk(n: int, seed: int = 0, vol: float = 0.01, start_price: float = 100.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return start_price * np.exp(np.cumsum(rng.normal(0.0, vol, n)))


def make_bars(n: int = 500, seed: int = 0, start: int = 0, vol: float = 0.01, step_ns: int = DAY_NS) -> Bars:
    """OHLC bars around a random walk: open gaps from the previous close, wicks beyond the body."""
    rng = np.random.default_rng(seed + 1000)
    close = random_walk(n, seed, vol)
    open_ = np.empty(n)
    open_[0] = close[0]
    open_[1:] = close[:-1] * np.exp(rng.normal(0.0, vol / 3, n - 1))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, vol / 2, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, vol / 2, n)))
    ts = np.datetime64("2020-01-01", "ns").astype(np.int64) + np.arange(n, dtype=np.int64) * step_ns
    return Bars("TEST", ts, open_, high, low, close, np.full(n, 1000.0), start=start)


def bars_from(open_, high, low, close, start: int = 0) -> Bars:
    """Bars from explicit price lists (daily timestamps)."""
    arrays = [np.asarray(a, dtype=float) for a in (open_, high, low, close)]
    n = len(arrays[0])
    ts = np.datetime64("2020-01-01", "ns").astype(np.int64) + np.arange(n, dtype=np.int64) * DAY_NS
    return Bars("HAND", ts, *arrays, np.ones(n), start=start)

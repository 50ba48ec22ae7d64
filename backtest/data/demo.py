"""A deterministic synthetic universe, so that `bt run` works on a fresh machine.

Symbols ``DEMO00`` … ``DEMO19`` (as many as asked; three digits past 100). Each is a seeded
geometric Brownian motion with its own drift (-5 %…+20 % a year) and volatility (15…50 %),
overnight gaps with occasional jumps, wicks above and below the body, and volume that is higher
on big moves (and, intraday, at the open and close). Prices are rounded to cents. Trading days
are weekdays (no holidays). Daily bars are stamped at midnight UTC of their date; intraday bars
cover 09:30-16:00 America/New_York (390 one-minute bars a day), stamped at the bar's start, in UTC.

The same arguments give the same bars, bytes and hashes on the same environment (numpy's
``default_rng`` streams are seeded from ``(seed, symbol number)``).
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from backtest.data.freq import NS, format_freq, parse_freq
from backtest.data.store import Store
from backtest.data.validate import Frame, Options, frame_from_arrays
from backtest.errors import DataError

_SESSION_NS = 390 * NS["min"]
_OPEN_NS = (9 * 60 + 30) * NS["min"]


def demo_symbols(n: int) -> list[str]:
    width = max(2, len(str(n - 1)))
    return [f"DEMO{i:0{width}d}" for i in range(n)]


def trading_days(start_year: int, end_year: int, days: int | None) -> np.ndarray:
    """Weekdays from Jan 1 of ``start_year``: through ``end_year``, or exactly ``days`` of them."""
    start = np.datetime64(f"{start_year:04d}-01-01", "D")
    if days is not None:
        if days < 1:
            raise DataError("--days must be at least 1")
        span = np.arange(start, start + days * 7 // 5 + 7, dtype="datetime64[D]")
        return span[np.is_busday(span)][:days]
    if end_year < start_year:
        raise DataError(f"--to {end_year} is before --from {start_year}")
    span = np.arange(start, np.datetime64(f"{end_year + 1:04d}-01-01", "D"), dtype="datetime64[D]")
    return span[np.is_busday(span)]


def bar_times(days: np.ndarray, step: int) -> np.ndarray:
    """UTC ns of every bar: shape (days, bars per day)."""
    day_ns = days.astype("datetime64[ns]").astype(np.int64)
    if step == NS["d"]:
        return day_ns[:, None]
    if step > _SESSION_NS or NS["d"] % step:
        raise DataError("demo bars are 1d or intraday (e.g. 1min, 5min, 1h, 1s); got a step that does not fit a day")
    from zoneinfo import ZoneInfo

    ny = ZoneInfo("America/New_York")
    offsets = np.array([_utc_offset_s(dt.datetime.combine(d.tolist(), dt.time(9, 30), tzinfo=ny)) for d in days],
                       dtype=np.int64) * NS["s"]
    per_day = -(-_SESSION_NS // step)
    return (day_ns + _OPEN_NS - offsets)[:, None] + np.arange(per_day, dtype=np.int64)[None, :] * step


def _utc_offset_s(t: dt.datetime) -> int:
    offset = t.utcoffset()
    assert offset is not None
    return offset // dt.timedelta(seconds=1)


def demo_bars(times: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """OHLCV for bar times of shape (days, k), from one generator."""
    n_days, k = times.shape
    p0 = rng.uniform(20.0, 300.0)
    mu, sigma = rng.uniform(-0.05, 0.20), rng.uniform(0.15, 0.50)
    sd_day = sigma / np.sqrt(252.0)
    sd_bar = sd_day * np.sqrt(0.9 / k)
    gap = rng.standard_normal(n_days) * 0.3 * sd_day
    gap += (rng.random(n_days) < 1 / 50) * rng.standard_normal(n_days) * 2.5 * sd_day
    r = (mu - 0.5 * sigma**2) / 252.0 / k + rng.standard_normal((n_days, k)) * sd_bar
    inc = r.copy()
    inc[:, 0] += gap
    log_close = np.log(p0) + np.cumsum(inc.ravel())
    log_open = log_close - r.ravel()
    wick_up = np.abs(rng.standard_normal(n_days * k)) * 0.5 * sd_bar
    wick_down = np.abs(rng.standard_normal(n_days * k)) * 0.5 * sd_bar
    o, c = np.exp(log_open), np.exp(log_close)
    h = np.maximum(o, c) * np.exp(wick_up)
    lo = np.minimum(o, c) * np.exp(-wick_down)
    o, h, lo, c = (np.maximum(np.round(x, 2), 0.01) for x in (o, h, lo, c))
    h = np.maximum.reduce([o, h, c])
    lo = np.minimum.reduce([o, lo, c])
    base = rng.uniform(2e5, 5e6) / k
    j = np.arange(k)
    shape = 1.0 + 1.5 * ((j - (k - 1) / 2) / ((k - 1) / 2)) ** 2 if k > 1 else np.ones(1)
    noise = rng.lognormal(0.0, 0.5, n_days * k)
    vol = np.round(base * np.tile(shape, n_days) * noise * (1.0 + 2.0 * np.abs(r.ravel()) / sd_bar))
    return {"ts": times.ravel(), "open": o, "high": h, "low": lo, "close": c, "volume": vol}


def write_demo(store: Store, *, symbols: int = 20, freq: str = "1d", start_year: int = 2015,
               end_year: int = 2024, days: int | None = None, seed: int = 0, replace: bool = False) -> list[str]:
    """Write the demo universe into ``store``; returns the symbols written.

    ``days`` = exactly that many trading days from Jan 1 of ``start_year`` (``end_year`` is then
    ignored); e.g. ``freq="1min", days=252`` gives 98 280 bars per symbol. Writing the same
    universe again changes nothing; a different one over it needs ``replace=True``, which removes
    the old demo symbols first.
    """
    if not 1 <= symbols <= 1000:
        raise DataError("--symbols must be between 1 and 1000")
    step = parse_freq(freq)
    times = bar_times(trading_days(start_year, end_year, days), step)
    names = demo_symbols(symbols)
    held = {s.symbol: s.freq for s in store.summary() if s.symbol in names}
    if replace:
        for name in held:  # a new demo replaces the old one whole (its frequency may differ)
            store.remove(name)
    elif any(f != format_freq(step) for f in held.values()):
        sym, f = next((k, v) for k, v in held.items() if v != format_freq(step))
        raise DataError(f"the store already holds {sym} with {f} bars; pass --replace to write the new demo "
                        f"over the old one, or use another --data folder")
    opts = Options(replace=replace)
    batch: list[Frame] = []
    for i, name in enumerate(names):
        b = demo_bars(times, np.random.default_rng([seed, i]))
        batch.append(frame_from_arrays(name, b["ts"], b["open"], b["high"], b["low"], b["close"], b["volume"], opts))
        if sum(len(f.cols) for f in batch) >= 2_000_000 or i == len(names) - 1:
            store._commit(batch, opts)  # one commit for many symbols: far fewer fsyncs than one each
            batch = []
    return names

"""Helpers for the data-store tests: valid bars, and CSV text written the way vendors do."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from backtest.data import Store

DAY = 86_400_000_000_000
MIN = 60_000_000_000


def ns(text: str) -> int:
    """"2020-01-02" or "2020-01-02T14:30" (UTC) → int ns."""
    return int(np.datetime64(text, "ns").astype(np.int64))


def make_bars(n: int, start: str = "2020-01-01", step: int = DAY, seed: int = 0, weekdays: bool = True
              ) -> dict[str, np.ndarray]:
    """Valid OHLCV: prices with two decimals, high/low bracketing open/close."""
    rng = np.random.default_rng(seed)
    if step == DAY and weekdays:
        days = np.arange(np.datetime64(start, "D"), np.datetime64(start, "D") + n * 2 + 7)
        ts = days[np.is_busday(days)][:n].astype("datetime64[ns]").astype(np.int64)
    else:
        ts = ns(start) + np.arange(n, dtype=np.int64) * step
    close = np.round(100 * np.exp(np.cumsum(rng.normal(0, 0.01, n))), 2)
    open_ = np.round(close * np.exp(rng.normal(0, 0.005, n)), 2)
    high = np.round(np.maximum(open_, close) + rng.uniform(0, 1, n), 2)
    low = np.round(np.minimum(open_, close) - rng.uniform(0, 1, n), 2)
    volume = rng.integers(1000, 100000, n).astype(float)
    return {"ts": ts, "open": open_, "high": high, "low": low, "close": close, "volume": volume}


def iso_date(t: int) -> str:
    return str(np.datetime64(int(t), "ns").astype("datetime64[D]"))


def iso_minute(t: int) -> str:
    return str(np.datetime64(int(t), "ns").astype("datetime64[m]")).replace("T", " ")


def to_csv(bars: dict[str, np.ndarray], *, columns: tuple[str, ...] = ("date", "open", "high", "low", "close", "volume"),
           ts: Callable[[int], str] = iso_date, newline: str = "\n", extra: dict[str, list[str]] | None = None) -> str:
    """CSV text of ``bars``; column headers are written as given (their order and case are the test's)."""
    lines = [",".join(columns)]
    for i in range(len(bars["ts"])):
        cells = []
        for c in columns:
            key = c.strip().lower().replace(" ", "")
            if extra and c in extra:
                cells.append(extra[c][i])
            elif key in ("date", "datetime", "timestamp", "time"):
                cells.append(ts(int(bars["ts"][i])))
            elif key == "adjclose":
                cells.append(f"{bars['close'][i] * 0.5:.4f}")
            else:
                v = bars[key][i]
                cells.append(f"{v:.0f}" if key == "volume" else f"{v:.2f}")
        lines.append(",".join(cells))
    return newline.join(lines) + newline


def stored_files(store: Store) -> list[str]:
    """Every file under the store's bars/ (relative), to show that nothing was written."""
    bars = store.root / "bars"
    if not bars.exists():
        return []
    return sorted(str(p.relative_to(bars)) for p in bars.rglob("*") if p.is_file() and p.name != ".lock")

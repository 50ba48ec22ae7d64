"""Bar frequencies ("1d", "5min", "1s") and UTC timestamp formatting for messages."""

from __future__ import annotations

import re
from typing import Any

from backtest.errors import DataError

NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "min": 60_000_000_000,
      "h": 3_600_000_000_000, "d": 86_400_000_000_000, "w": 7 * 86_400_000_000_000}
_ALIASES = {"m": "min", "mins": "min", "minute": "min", "minutes": "min", "t": "min",
            "sec": "s", "secs": "s", "second": "s", "seconds": "s",
            "hr": "h", "hour": "h", "hours": "h", "day": "d", "days": "d", "week": "w", "weeks": "w"}
_FREQ = re.compile(r"^\s*(\d*)\s*([a-z]+)\s*$")


def parse_freq(text: str) -> int:
    """"5min" → 300 000 000 000 (ns). Accepts s, min (or m), h, d, w, ms, us, ns with a count."""
    m = _FREQ.match(text.lower())
    unit = m and _ALIASES.get(m.group(2), m.group(2))
    if not m or unit not in NS or m.group(1) in ("0",):
        raise DataError(f'bad bar frequency "{text}": use a count and a unit, e.g. 1s, 5min, 1h, 1d')
    return int(m.group(1) or 1) * NS[unit]


def format_freq(step_ns: int) -> str:
    """The inverse of parse_freq: 60e9 → "1min", 86400e9 → "1d"; 0 → ""."""
    if step_ns <= 0:
        return ""
    for unit in ("w", "d", "h", "min", "s", "ms", "us", "ns"):
        if step_ns % NS[unit] == 0:
            return f"{step_ns // NS[unit]}{unit}"
    return f"{step_ns}ns"  # pragma: no cover - ns divides everything


def modal_step(ts: Any) -> int:
    """The most common spacing between consecutive timestamps (the smallest on ties); 0 if < 2 bars."""
    import numpy as np

    if len(ts) < 2:
        return 0
    diffs = np.diff(ts)
    diffs = diffs[diffs > 0]
    if len(diffs) == 0:
        return 0
    values, counts = np.unique(diffs, return_counts=True)
    return int(values[int(np.argmax(counts))])


def infer_freq(ts: Any) -> str:
    return format_freq(modal_step(ts))


def fmt_ts(ns: int, utc: bool = True) -> str:
    """A UTC timestamp for people: "2020-01-02" at midnight, else "2020-01-02 14:30 UTC"."""
    import numpy as np

    text = str(np.datetime64(int(ns), "ns"))
    date, _, time = text.partition("T")
    time = time.rstrip("0").rstrip(".")
    if time in ("00:00:00", ""):
        return date
    if time.endswith(":00") and time.count(":") == 2:
        time = time[:-3]
    return f"{date} {time}{' UTC' if utc else ''}"


def year_of(ts: Any) -> Any:
    """UTC calendar year of each int64 ns timestamp (vectorised)."""
    import numpy as np

    return np.asarray(ts).astype("datetime64[ns]").astype("datetime64[Y]").astype(np.int64) + 1970

"""The bars a portfolio strategy sees: many symbols aligned on one timeline.

``Universe`` holds 2-D float64 arrays (bars × symbols) on the union of the symbols' timestamps,
NaN where a symbol has no bar at that time. ``start`` is the index of the first bar at or after the
requested start date; the bars before it are warm-up, counted on the union timeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from backtest.engine.bars import Bars

FIELDS = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True, eq=False)
class Universe:
    """Bars of ``symbols`` (in the order the user gave them) on the timeline ``ts`` (UTC int64 ns,
    sorted, unique: the union of the symbols' own timestamps)."""

    symbols: tuple[str, ...]
    ts: np.ndarray
    open: np.ndarray  # (bars, symbols) float64, NaN where a symbol has no bar
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    start: int = 0
    partitions: tuple[str, ...] = field(default=())
    label: str = ""  # the name results are filed under (the universe's name, or the symbols joined)

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @property
    def symbol(self) -> str:
        return self.label or ",".join(self.symbols)

    def sliced(self, offset: int, partitions: Sequence[str]) -> Universe:
        """The bars from ``offset`` on (``start`` moves with them)."""
        if offset == 0 and tuple(partitions) == self.partitions:
            return self
        cut = {f: getattr(self, f)[offset:] for f in FIELDS}
        return Universe(self.symbols, self.ts[offset:], start=self.start - offset, partitions=tuple(partitions),
                        label=self.label, **cut)


def union_times(chunks: Sequence[np.ndarray]) -> np.ndarray:
    """The sorted, unique int64 times of all ``chunks`` (not np.unique: it imports numpy.ma,
    25-45 ms of a worker's start)."""
    if not chunks:
        return np.empty(0, dtype=np.int64)
    ts = np.sort(np.concatenate(chunks), kind="stable")
    return ts[np.concatenate(([True], ts[1:] != ts[:-1]))] if ts.shape[0] > 1 else ts


def align(members: Sequence[Bars], start_ns: int, warmup: int, label: str = "",
          partitions: Sequence[str] = ()) -> Universe:
    """One universe from each member's bars (each read with at least ``warmup`` bars of its own
    before ``start_ns``): the union of their timestamps, cut to ``warmup`` bars before the first
    bar at or after ``start_ns``. Every union bar in that cut is within its symbols' own ``warmup``
    bars, so the result depends only on the partitions those name, whatever longer reads it is
    made from."""
    if not members:
        raise ValueError("a universe needs at least one symbol")
    ts = union_times([b.ts for b in members])
    n, m = ts.shape[0], len(members)
    arrays = {f: np.full((n, m), np.nan) for f in FIELDS}
    for j, b in enumerate(members):
        at = np.searchsorted(ts, b.ts)
        for f in FIELDS:
            arrays[f][at, j] = getattr(b, f)
    start = int(np.searchsorted(ts, start_ns, side="left"))
    offset = max(0, start - warmup)
    cut = {f: np.ascontiguousarray(a[offset:]) for f, a in arrays.items()}
    return Universe(tuple(b.symbol for b in members), np.ascontiguousarray(ts[offset:]), start=start - offset,
                    partitions=tuple(partitions), label=label, **cut)


def ffill(values: np.ndarray) -> np.ndarray:
    """``values`` (bars × symbols) with each NaN replaced by the last value before it in its column
    (NaN until a column's first value): e.g. every symbol's last close at every bar."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    idx = np.where(np.isnan(values), 0, np.arange(n)[:, None] if values.ndim == 2 else np.arange(n))
    np.maximum.accumulate(idx, axis=0, out=idx)
    out = np.take_along_axis(values, idx, axis=0) if values.ndim == 2 else values[idx]
    return out


def period_ends(ts: np.ndarray, period: str = "M") -> np.ndarray:
    """A bool per bar: True at the last bar of each calendar period of ``ts`` (UTC), one of "W"
    (week), "M" (month), "Q" (quarter) or "Y" (year); the last bar counts as an end. Decide a
    rebalance at these bars' closes to trade at the next period's first bar."""
    if period not in ("W", "M", "Q", "Y"):
        raise ValueError(f'period must be one of W, M, Q, Y, not "{period}"')
    if period == "W":  # weeks from Monday (1970-01-01, day 0, was a Thursday)
        stamp = (np.asarray(ts, dtype=np.int64) // 86_400_000_000_000 + 3) // 7
    else:
        unit = "Y" if period == "Y" else "M"
        stamp = np.asarray(ts, dtype="datetime64[ns]").astype(f"datetime64[{unit}]").astype(np.int64)
        if period == "Q":
            stamp = stamp // 3
    ends = np.empty(stamp.shape[0], dtype=bool)
    if stamp.shape[0]:
        ends[:-1] = stamp[1:] != stamp[:-1]
        ends[-1] = True
    return ends

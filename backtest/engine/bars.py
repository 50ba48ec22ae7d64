"""The bars a strategy and the simulation see: contiguous NumPy arrays, one symbol."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)
class Bars:
    """One symbol's bars, sorted by unique ``ts`` (UTC int64 ns).

    ``start`` is the index of the first bar at or after the requested start date; bars before it
    are warm-up: indicators see them, but the position is flat there and metrics start at
    ``start``. ``partitions`` are the content hashes of the partitions the bars were read from.
    """

    symbol: str
    ts: np.ndarray  # int64 ns UTC
    open: np.ndarray  # float64
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    start: int = 0
    partitions: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return int(self.ts.shape[0])

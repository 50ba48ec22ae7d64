"""Long series made short for drawing, keeping what the eye must see.

A chart ``width`` pixels wide cannot show more than a few points per pixel column. ``extremes``
splits the series into ``buckets`` equal runs of points and keeps, of each, the first and last
point and the points where each given series is lowest and highest: the drawn line then reaches
every peak and trough the full series reaches (the deepest drawdown is never smoothed away), which
plain striding (every k-th point) does not promise. Kept points are real points (no averaging), in
order, so a chart of them is the chart of the full series at that width.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def extremes(n: int, series: Sequence[np.ndarray], buckets: int = 1000) -> np.ndarray:
    """Indices (sorted, unique) of the points of ``n``-point ``series`` to keep for drawing.

    At most ``2 + 2 × len(series)`` points per bucket; every point when ``n`` is already small."""
    if buckets < 1:
        raise ValueError("buckets must be at least 1")
    if n <= buckets * (2 + 2 * len(series)):
        return np.arange(n)
    width = -(-n // buckets)  # ceil: every bucket but the last is full
    starts = np.arange(0, n, width)
    keep = [starts, np.minimum(starts + width - 1, n - 1), np.array([n - 1])]
    for s in series:
        s = np.asarray(s, dtype=np.float64)
        if s.shape[0] != n:
            raise ValueError(f"series of {s.shape[0]} points, expected {n}")
        full = np.concatenate([s, np.full(len(starts) * width - n, s[-1])]) if len(starts) * width > n else s
        rows = full[: len(starts) * width].reshape(len(starts), width)
        # NaN (e.g. a curve undefined before its warm-up ends) never wins a bucket's min or max
        lo = np.where(np.isnan(rows), np.inf, rows).argmin(axis=1)
        hi = np.where(np.isnan(rows), -np.inf, rows).argmax(axis=1)
        keep.append(np.minimum(starts + lo, n - 1))
        keep.append(np.minimum(starts + hi, n - 1))
    return np.unique(np.concatenate(keep))

"""Downsampling for drawing keeps every bucket's extremes, the ends, and the order."""

from __future__ import annotations

import numpy as np
import pytest

from backtest.report.downsample import extremes


def test_small_series_are_kept_whole() -> None:
    assert extremes(100, [np.arange(100.0)], buckets=50).tolist() == list(range(100))


def test_every_extreme_and_both_ends_survive_a_million_points() -> None:
    rng = np.random.default_rng(1)
    walk = np.cumsum(rng.normal(size=1_000_000))
    walk[123_457] = walk.max() + 50  # a one-point spike
    walk[876_543] = walk.min() - 50  # and a one-point crash
    other = rng.normal(size=walk.size)
    keep = extremes(walk.size, [walk, other], buckets=800)
    assert keep.size < 800 * 6
    assert np.all(np.diff(keep) > 0)  # sorted, unique
    assert keep[0] == 0 and keep[-1] == walk.size - 1
    assert 123_457 in keep and 876_543 in keep
    assert walk[keep].max() == walk.max() and walk[keep].min() == walk.min()
    assert other[keep].max() == other.max() and other[keep].min() == other.min()
    # every bucket's own extremes are there, not only the global ones
    width = -(-walk.size // 800)
    for b in (0, 399, 799):
        part = slice(b * width, min((b + 1) * width, walk.size))
        assert b * width + int(np.argmax(walk[part])) in keep
        assert b * width + int(np.argmin(walk[part])) in keep


def test_striding_would_lose_the_spike_that_extremes_keeps() -> None:
    x = np.zeros(100_000)
    x[50_001] = 1.0
    assert x[::100].max() == 0.0  # what plain striding draws
    assert x[extremes(x.size, [x], buckets=500)].max() == 1.0


def test_nan_never_wins_a_bucket() -> None:
    x = np.arange(10_000, dtype=float)
    x[:5_000] = np.nan  # e.g. undefined during a warm-up
    keep = extremes(x.size, [x], buckets=10)
    assert 9_999 in keep and 5_000 in keep


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="buckets"):
        extremes(10, [np.zeros(10)], buckets=0)
    with pytest.raises(ValueError, match="expected 100000"):
        extremes(100_000, [np.zeros(10)], buckets=10)

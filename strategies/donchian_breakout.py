"""Donchian channel breakout (turtle style): trend following on new highs and lows.

Goes long when the close breaks above the highest high of the previous ``entry_n`` bars and exits
when it falls below the lowest low of the previous ``exit_n`` bars. With ``short=True`` it is
mirrored: short below the previous ``entry_n``-bar low, cover above the previous ``exit_n``-bar
high.

Parameters: ``entry_n``, ``exit_n`` (channel lengths in bars, exit_n <= entry_n), ``short`` (bool).
"""

import numpy as np

from backtest.engine.indicators import highest_nb, lowest_nb
from backtest.engine.signals import events_target_nb
from backtest.strategy import Strategy


def previous(x):
    """x shifted one bar later (the channel of the bars before this one)."""
    out = np.empty_like(x)
    out[:1] = np.nan
    out[1:] = x[:-1]
    return out


def channel_high(high, n):
    return previous(highest_nb(high, n))


def channel_low(low, n):
    return previous(lowest_nb(low, n))


class DonchianBreakout(Strategy):
    entry_n = 20
    exit_n = 10
    short = False
    grid = {"entry_n": [20, 55], "exit_n": [10, 20]}

    def constraint(self):
        return self.exit_n <= self.entry_n

    def warmup(self):
        return max(self.entry_n, self.exit_n) + 1

    def signals(self, bars):
        close = bars.close
        entry_high = self.cached(channel_high, bars.high, self.entry_n)
        entry_low = self.cached(channel_low, bars.low, self.entry_n)
        exit_high = self.cached(channel_high, bars.high, self.exit_n)
        exit_low = self.cached(channel_low, bars.low, self.exit_n)
        short_entry = (close < entry_low) & self.short
        return events_target_nb(close > entry_high, close < exit_low, short_entry, close > exit_high)

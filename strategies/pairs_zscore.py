"""A pairs trade on the z-score of the spread between two symbols' log prices.

A portfolio strategy on the first two symbols of the universe (e.g. ``--symbols KO,PEP``): the
spread is log(A) − log(B); when its z-score over ``lookback`` bars rises above ``entry`` it sells
the spread (A short, B long), when it falls below −``entry`` it buys it, and it closes the
position once |z| is back under ``exit``. Each leg is ``size`` of the account.

    bt run strategies/pairs_zscore.py --symbols KO,PEP --from 2015 --to 2024 --param entry=1.5,2,2.5

Parameters: ``lookback`` (bars), ``entry``, ``exit`` (z-scores), ``size`` (weight of each leg).
"""

import numpy as np

from backtest.engine.universe import ffill
from backtest.strategy import PortfolioStrategy


def spread_zscore(close, lookback):
    """The z-score of log(A) − log(B) against its mean and deviation over ``lookback`` bars."""
    last = ffill(close[:, :2])
    spread = np.log(last[:, 0]) - np.log(last[:, 1])
    z = np.full(spread.shape, np.nan)
    for i in range(lookback - 1, spread.shape[0]):
        window = spread[i - lookback + 1 : i + 1]
        sd = np.std(window)
        if sd > 0:
            z[i] = (spread[i] - np.mean(window)) / sd
    return z


class PairsZScore(PortfolioStrategy):
    lookback = 60
    entry = 2.0
    exit = 0.5
    size = 0.5
    grid = {"lookback": [20, 40, 60, 120], "entry": [1.5, 2.0, 2.5], "exit": [0.0, 0.5]}

    def constraint(self):
        return self.lookback >= 2 and 0 <= self.exit < self.entry and 0 < self.size <= 0.5

    def weights(self, u):
        if len(u.symbols) < 2:
            raise ValueError(f"a pairs trade needs two symbols, got {len(u.symbols)}; give --symbols A,B")
        z = self.cached(spread_zscore, u.close, self.lookback)
        w = np.full((len(u.ts), len(u.symbols)), np.nan)
        state = 0  # +1: long the spread, -1: short it
        for i in range(len(z)):
            if np.isnan(z[i]):
                continue
            if state == 0 and z[i] > self.entry:
                state = -1
            elif state == 0 and z[i] < -self.entry:
                state = 1
            elif state != 0 and abs(z[i]) < self.exit:
                state = 0
            else:
                continue
            w[i, :2] = (state * self.size, -state * self.size)
            w[i, 2:] = 0.0
        return w

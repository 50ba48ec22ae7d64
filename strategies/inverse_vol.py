"""Inverse-volatility weights: each month, split the account in inverse proportion to volatility.

A portfolio strategy: at every month's last bar each symbol's weight is 1/σ (σ: the standard
deviation of its daily returns over the last ``lookback`` bars), scaled so that the weights add up
to ``exposure``; calmer symbols get more. Between month ends it sends no orders.

    bt run strategies/inverse_vol.py --universe my_universe.txt --from 2015 --to 2024

Parameters: ``lookback`` (bars), ``exposure`` (the fraction of the account invested).
"""

import numpy as np

from backtest.engine.universe import ffill, period_ends
from backtest.strategy import PortfolioStrategy


def volatility(close, lookback):
    """Each symbol's rolling standard deviation of bar returns over ``lookback`` bars."""
    last = ffill(close)
    r = np.full_like(last, np.nan)
    r[1:] = last[1:] / last[:-1] - 1.0
    out = np.full_like(last, np.nan)
    for i in range(lookback, last.shape[0]):
        out[i] = np.std(r[i - lookback + 1 : i + 1], axis=0, ddof=1)
    return out


class InverseVolatility(PortfolioStrategy):
    lookback = 63
    exposure = 1.0
    grid = {"lookback": [21, 42, 63, 126, 252]}

    def constraint(self):
        return self.lookback >= 2 and 0.0 < self.exposure <= 1.0

    def weights(self, u):
        vol = self.cached(volatility, u.close, self.lookback)
        w = np.full(vol.shape, np.nan)
        for i in np.flatnonzero(self.cached(period_ends, u.ts, "M")):
            inv = np.where(vol[i] > 0, 1.0 / vol[i], np.nan)
            total = np.nansum(inv)
            if total > 0:
                w[i] = np.nan_to_num(inv / total * self.exposure)
        return w

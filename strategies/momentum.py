"""Time-series momentum: hold the direction of the trailing return.

Long while the close is more than ``threshold`` above the close ``lookback`` bars ago; flat
otherwise, or short (``short=True``) while it is more than ``threshold`` below it.

Parameters: ``lookback`` (bars), ``threshold`` (a fraction, e.g. 0.02), ``short`` (bool).
"""

import numpy as np

from backtest.strategy import Strategy


class Momentum(Strategy):
    lookback = 60
    threshold = 0.0
    short = False
    grid = {"lookback": [20, 60, 120, 250], "threshold": [0.0, 0.02]}

    def constraint(self):
        return self.lookback >= 1 and self.threshold >= 0

    def signals(self, bars):
        close = bars.close
        past = np.full_like(close, np.nan)
        past[self.lookback :] = close[: -self.lookback]
        trailing = close / past - 1.0  # NaN during the first `lookback` bars: flat
        target = np.where(trailing > self.threshold, 1.0, 0.0)
        if self.short:
            target[trailing < -self.threshold] = -1.0
        return target

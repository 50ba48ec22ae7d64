"""SMA cross: trade the crosses of a fast and a slow simple moving average of the close.

Enter long when the fast SMA crosses over the slow one; on the cross under, exit (``short=False``)
or reverse to short (``short=True``, then always in the market after the first cross). Crosses are
strict: the fast SMA must be below the slow one on the previous bar and above it on this bar.

Parameters: ``fast`` and ``slow`` (SMA lengths in bars, fast < slow), ``short`` (bool).
"""

from backtest.engine.indicators import sma_nb
from backtest.engine.signals import cross_target_nb
from backtest.strategy import Strategy


class SmaCross(Strategy):
    fast = 10
    slow = 20
    short = False
    grid = {"fast": range(5, 55, 5), "slow": range(20, 220, 20)}

    def constraint(self):
        return self.fast < self.slow

    def signals(self, bars):
        fast = self.cached(sma_nb, bars.close, self.fast)
        slow = self.cached(sma_nb, bars.close, self.slow)
        return cross_target_nb(fast, slow, self.short)

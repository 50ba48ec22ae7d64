"""Bollinger-band mean reversion: buy a close below the lower band, exit at the middle band.

Bands are the ``n``-bar mean of the close ± ``k`` population standard deviations. Goes long when
the close is below the lower band and exits when it is back above the middle. With
``short=True`` it also goes short above the upper band and covers below the middle.

Parameters: ``n`` (window in bars), ``k`` (band width in standard deviations), ``short`` (bool).
"""

from backtest.engine.indicators import bollinger_nb
from backtest.engine.signals import events_target_nb
from backtest.strategy import Strategy


class BollingerReversion(Strategy):
    n = 20
    k = 2.0
    short = False
    grid = {"n": [10, 20, 50], "k": [1.5, 2.0, 2.5]}

    def signals(self, bars):
        middle, upper, lower = self.cached(bollinger_nb, bars.close, self.n, self.k)
        close = bars.close
        above_upper = (close > upper) & self.short
        return events_target_nb(close < lower, close > middle, above_upper, close < middle)

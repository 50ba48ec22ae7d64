"""RSI mean reversion: buy oversold, sell once the RSI has recovered.

Goes long when Wilder's RSI(``n``) of the close falls below ``lower`` and exits when it rises
above ``exit_level``. With ``short=True`` it also goes short when the RSI rises above ``upper``
and covers when it falls below ``exit_level``.

Parameters: ``n`` (RSI length in bars), ``lower``, ``upper``, ``exit_level`` (RSI levels,
lower < exit_level < upper), ``short`` (bool).
"""

from backtest.engine.indicators import rsi_nb
from backtest.engine.signals import events_target_nb
from backtest.strategy import Strategy


class RsiReversion(Strategy):
    n = 14
    lower = 30.0
    upper = 70.0
    exit_level = 50.0
    short = False
    grid = {"n": [7, 14, 21], "lower": [20.0, 25.0, 30.0]}

    def constraint(self):
        return self.lower < self.exit_level < self.upper

    def warmup(self):
        return 5 * self.n  # Wilder's smoothing forgets its start slowly

    def signals(self, bars):
        rsi = self.cached(rsi_nb, bars.close, self.n)
        oversold = rsi < self.lower  # NaN during warm-up compares False: no signal
        overbought = (rsi > self.upper) & self.short
        return events_target_nb(oversold, rsi > self.exit_level, overbought, rsi < self.exit_level)

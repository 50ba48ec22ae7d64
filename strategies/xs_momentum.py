"""Cross-sectional momentum: each month, hold the ``top`` symbols with the best trailing return.

A portfolio strategy: one account for the whole universe. At every month's last bar it ranks the
symbols by their return over the last ``lookback`` bars and puts an equal share of the account in
the best ``top`` (the rest get weight 0); between month ends it sends no orders.

    bt run strategies/xs_momentum.py --symbols AAPL,MSFT,GOOG,AMZN --from 2015 --to 2024

Parameters: ``lookback`` (bars), ``top`` (how many symbols to hold).
"""

import numpy as np

from backtest.engine.universe import ffill, period_ends
from backtest.strategy import PortfolioStrategy


def trailing_return(close, lookback):
    """Each symbol's return over the last ``lookback`` bars (its last close where it has no bar)."""
    last = ffill(close)
    past = np.full_like(last, np.nan)
    past[lookback:] = last[:-lookback]
    return last / past - 1.0


def ranked(ret, ends):
    """At each period end: the bar, the symbols from best to worst trailing return (NaN last),
    and how many have one."""
    rows = np.flatnonzero(ends)
    order = np.argsort(-ret[rows], axis=1, kind="stable")
    return rows, order, np.count_nonzero(~np.isnan(ret[rows]), axis=1)


class CrossSectionalMomentum(PortfolioStrategy):
    lookback = 126
    top = 2
    grid = {"lookback": range(21, 253, 21), "top": [1, 2, 3]}

    def constraint(self):
        return self.lookback >= 1 and self.top >= 1

    def weights(self, u):
        ret = self.cached(trailing_return, u.close, self.lookback)
        rows, order, valid = self.cached(ranked, ret, self.cached(period_ends, u.ts, "M"))
        held = np.minimum(valid, self.top)  # symbols held from each period end on
        w = np.full(ret.shape, np.nan)
        live = held > 0  # no symbol with a full lookback yet: no orders
        w[rows[live]] = 0.0
        pick = np.arange(ret.shape[1]) < held[:, None]  # the best `held` of each row
        at = np.broadcast_to(rows[:, None], pick.shape)[pick]
        w[at, order[pick]] = np.broadcast_to(1.0 / np.maximum(held, 1)[:, None], pick.shape)[pick]
        return w

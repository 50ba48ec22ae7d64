"""Agreement with backtesting.py: its README SmaCross(10, 20) on its bundled GOOG data.

backtesting.py settings: cash 10 000, ``commission=.002`` (charged on entry and on exit, on the
fill price), ``exclusive_orders=True`` (a new order first closes the open trade), default size
(all available cash in whole units: floor(cash / (price·(1 + commission)))), fills at the next
bar's open. That is bt's semantics (docs/engine.md) with integer units; a reversal is a close followed by an entry
sized from the cash left, as in bt.

Long-only maps to backtesting.py as: ``buy()`` on the cross over, ``position.close()`` on the cross
under (instead of ``sell()``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("backtesting")

from backtesting import Backtest  # noqa: E402
from backtesting import Strategy as BtpStrategy  # noqa: E402
from backtesting.lib import crossover  # noqa: E402
from backtesting.test import GOOG, SMA  # noqa: E402

from backtest.engine import Bars, SimSettings, run_grid  # noqa: E402
from backtest.strategy import load_strategy  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


class SmaCross(BtpStrategy):  # backtesting.py's README example
    n1 = 10
    n2 = 20
    long_only = False

    def init(self):
        price = self.data.Close
        self.ma1 = self.I(SMA, price, self.n1)
        self.ma2 = self.I(SMA, price, self.n2)

    def next(self):
        if crossover(self.ma1, self.ma2):
            self.buy()
        elif crossover(self.ma2, self.ma1):
            if self.long_only:
                self.position.close()
            else:
                self.sell()


def goog_bars() -> Bars:
    ts = GOOG.index.values.astype("datetime64[ns]").astype(np.int64)
    cols = [GOOG[c].to_numpy(dtype=float) for c in ("Open", "High", "Low", "Close", "Volume")]
    return Bars("GOOG", ts, *cols)


@pytest.mark.parametrize("short", [True, False], ids=["long-short", "long-only"])
def test_same_trades_and_final_equity(short):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = Backtest(GOOG, SmaCross, cash=10_000, commission=0.002, exclusive_orders=True).run(
            long_only=not short
        )
    theirs = stats["_trades"]

    cls = load_strategy(ROOT / "strategies" / "sma_cross.py")
    settings = SimSettings(cash=10_000.0, commission=0.002, units="integer")
    (out,) = run_grid(cls, goog_bars(), [{"fast": 10, "slow": 20, "short": short}], settings)
    ours = out.trades[out.trades["closed"]]  # backtesting.py lists closed trades only

    assert len(ours) == len(theirs) > 40
    np.testing.assert_array_equal(ours["entry_index"], theirs["EntryBar"].to_numpy())
    np.testing.assert_array_equal(ours["exit_index"], theirs["ExitBar"].to_numpy())
    np.testing.assert_array_equal(ours["entry_price"], theirs["EntryPrice"].to_numpy())
    np.testing.assert_array_equal(ours["exit_price"], theirs["ExitPrice"].to_numpy())
    np.testing.assert_array_equal(ours["side"] * ours["size"], theirs["Size"].to_numpy())
    np.testing.assert_allclose(ours["pnl"], theirs["PnL"].to_numpy(), rtol=1e-9)
    assert out.metrics["final_equity"] == pytest.approx(stats["Equity Final [$]"], rel=1e-9)
    # the position open at the end is ours only: one more trade, not closed
    assert len(out.trades) - len(ours) == (1 if stats["_strategy"].position else 0)

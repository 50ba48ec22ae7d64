"""backtesting.py side of the SMA workloads. Runs in the peers' venv (benchmarks/.peers/).

    python benchmarks/peers/backtesting_sma.py --data FILE.npz --out answers.json [--symbols 0|all]
        [--combos all|every:K|5:20,...] [--grid sma_grid|small] [--bars N] [--jobs N]

Semantics: the README's ``SmaCross`` made long-only: ``self.I(SMA, Close, n)`` (pandas rolling
mean), ``crossover`` from ``backtesting.lib`` (strict: a[-2] < b[-2] and a[-1] > b[-1]); on a
cross up when flat ``self.buy()``, on a cross down ``self.position.close()``. Market orders placed
in ``next()`` at bar t fill at bar t+1's open (``trade_on_close=False``, the default), which is
bt's default fill. ``commission=0.001`` is charged per side on traded notional, as in bt.

Sizing is where the engines cannot be made identical: ``buy()`` without a size buys
``floor(cash·(1 − ε) / (open·(1 + commission)))`` *whole* units (backtesting.py has no fractional
units), which is bt's ``--units integer``, not the fractional sizing of the benchmark. So entry
and exit bars, and trade counts, are comparable with vectorbt and bt; final equity differs by the
cash left over from rounding down (checked exactly, against a slow reference with integer units,
by ``run.py --suite selftest``). ``finalize_trades=False``: a position open at the end stays
open and is valued at the last close (its trade is counted in ``trades``, not ``closed_trades``).
Every ``Backtest.run`` computes backtesting.py's full stats series: that is its cost with stats.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import os  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TQDM_DISABLE", "1")  # backtesting.py's per-run progress bar

import common  # noqa: E402
import numpy as np  # noqa: E402

from peers import args as peer_args  # noqa: E402


def _strategy_class() -> Any:
    import pandas as pd
    from backtesting import Strategy
    from backtesting.lib import crossover

    def sma(values: Any, n: int) -> Any:
        return pd.Series(values).rolling(n).mean()

    class SmaCrossLong(Strategy):
        fast = 10
        slow = 20

        def init(self) -> None:
            self.f = self.I(sma, self.data.Close, self.fast)
            self.s = self.I(sma, self.data.Close, self.slow)

        def next(self) -> None:
            if crossover(self.f, self.s):
                if not self.position:
                    self.buy()
            elif crossover(self.s, self.f):
                if self.position:
                    self.position.close()

    return SmaCrossLong


def run_tasks(
    data: common.SyntheticData, tasks: list[tuple[int, int, int]], bars: int
) -> list[dict[str, Any]]:
    """Run ``(symbol index, fast, slow)`` tasks, one ``Backtest.run`` each."""
    import pandas as pd
    from backtesting import Backtest

    strategy = _strategy_class()
    index = pd.DatetimeIndex(data.ts[:bars].view("datetime64[ns]"))
    frames: dict[int, Any] = {}
    out = []
    for i, fast, slow in tasks:
        if i not in frames:
            frames.clear()
            frames[i] = Backtest(
                pd.DataFrame(
                    {
                        "Open": data.open[i, :bars],
                        "High": data.high[i, :bars],
                        "Low": data.low[i, :bars],
                        "Close": data.close[i, :bars],
                        "Volume": data.volume[i, :bars],
                    },
                    index=index,
                ),
                strategy,
                cash=common.CASH,
                commission=common.COMMISSION,
                spread=0.0,
                trade_on_close=False,
                exclusive_orders=False,
                finalize_trades=False,
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stats = frames[i].run(fast=fast, slow=slow)
        closed = int(stats["# Trades"])
        still_open = len(stats["_strategy"]._broker.trades)
        out.append(
            {
                "symbol": data.symbols[i],
                "fast": fast,
                "slow": slow,
                "final_equity": float(stats["Equity Final [$]"]),
                "trades": closed + still_open,
                "closed_trades": closed,
            }
        )
    return out


def _worker(job: tuple[str, list[tuple[int, int, int]], int]) -> list[dict[str, Any]]:
    path, tasks, bars = job
    return run_tasks(common.load_data(path), tasks, bars)


def main() -> None:
    a = peer_args.parser(__doc__).parse_args()
    import backtesting
    import pandas as pd

    t_import = time.perf_counter()
    data = common.load_data(a.data)
    sym_idx, combos, bars = peer_args.selection(a, data)
    tasks = [(i, f, s) for i in sym_idx for f, s in combos]
    t_load = time.perf_counter()
    if a.jobs > 1:
        import multiprocessing

        chunks = [(str(a.data), tasks[k :: a.jobs], bars) for k in range(a.jobs)]
        with multiprocessing.get_context("fork").Pool(a.jobs) as pool:
            answers = [t for part in pool.map(_worker, chunks, chunksize=1) for t in part]
    else:
        answers = run_tasks(data, tasks, bars)
    t_tasks = time.perf_counter()
    common.write_answers(
        a.out,
        "backtesting.py",
        a.grid,
        answers,
        phases={"import_s": t_import - T0, "load_s": t_load - t_import, "tasks_s": t_tasks - t_load},
        versions={"backtesting": backtesting.__version__, "pandas": pd.__version__, "numpy": np.__version__},
        settings={"jobs": a.jobs, "bars": bars, "symbols": len(sym_idx), "combos": len(combos)},
    )


if __name__ == "__main__":
    main()

"""vectorbt side of the portfolio suite. Runs in the peers' venv (benchmarks/.peers/), never in bt's.

    python benchmarks/peers/vectorbt_portfolio.py momentum --data FILE.npz --out answers.json
        --lookbacks 21,42,... --tops 1,2,...
    python benchmarks/peers/vectorbt_portfolio.py weights --data W.npz --out value.npy

``momentum``: the cross-sectional momentum strategy (``strategies/xs_momentum.py``) as a vectorbt
user writes it: trailing returns with pandas, ranks at month ends, equal weights for the top N,
then one ``Portfolio.from_orders`` over every parameter set at once (one column per symbol and set,
grouped by set, cash shared in each group) with ``size_type="targetpercent"``, the weights shifted
one bar and filled at the next open, ``call_seq="auto"`` (sells first). Writes each set's final
value, total return and the daily value series' Sharpe ratio (bt's definition: mean / std(ddof=1)
of bar returns × √252, the first return from the starting cash).

``weights``: the same simulation of weights given in the file (``open``, ``close``, ``weights``):
the real-data check, where bt's own strategy made the weights. Writes the value series.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

T0 = time.perf_counter()

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import vectorbt as vbt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings("ignore")

CASH = 100_000.0


def simulate(open_: pd.DataFrame, close: pd.DataFrame, weights: pd.DataFrame, group_by: object) -> object:
    return vbt.Portfolio.from_orders(
        close=close, size=weights.shift(1), size_type="targetpercent", price=open_, init_cash=CASH,
        cash_sharing=True, group_by=group_by, call_seq="auto", freq="1D",
    )


def sharpe(value: np.ndarray) -> float:
    prev = np.concatenate([[CASH], value[:-1]])
    r = (value - prev) / prev
    return float(np.mean(r) / np.std(r, ddof=1) * np.sqrt(252))


def momentum(args: argparse.Namespace) -> None:
    with np.load(args.data) as z:
        symbols = [str(s) for s in z["symbols"]]
        index = pd.to_datetime(z["ts"], utc=True)
        close = pd.DataFrame(z["close"].T, index=index, columns=symbols)
        open_ = pd.DataFrame(z["open"].T, index=index, columns=symbols)
    t_load = time.perf_counter()
    month = index.year * 12 + index.month
    month_end = pd.Series(np.append(month[1:] != month[:-1], True), index=index)
    frames, keys = [], []
    for lookback in args.lookbacks:
        ret = close.ffill() / close.ffill().shift(lookback) - 1.0
        rank = ret.rank(axis=1, ascending=False, method="first")
        for top in args.tops:
            chosen = (rank <= top).astype(float)
            w = chosen.div(chosen.sum(axis=1), axis=0)
            w[ret.isna().all(axis=1) | ~month_end] = np.nan
            frames.append(w)
            keys.append((lookback, top))
    weights = pd.concat(frames, axis=1, keys=pd.MultiIndex.from_tuples(keys, names=["lookback", "top"]))
    n_sets = len(keys)
    t_signals = time.perf_counter()
    pf = simulate(pd.concat([open_] * n_sets, axis=1, keys=weights.columns.droplevel(-1).unique()),
                  pd.concat([close] * n_sets, axis=1, keys=weights.columns.droplevel(-1).unique()),
                  weights, ["lookback", "top"])
    value = pf.value()
    t_sim = time.perf_counter()
    out = {}
    for lookback, top in keys:
        v = value[(lookback, top)].to_numpy()
        out[f"{lookback},{top}"] = {"final_equity": float(v[-1]), "total_return": float(v[-1] / CASH - 1.0),
                                    "sharpe": sharpe(v)}
    with open(args.out, "w") as f:
        json.dump({"answers": out, "phases": {"import": t_load - T0, "signals": t_signals - t_load,
                                              "simulation": t_sim - t_signals}}, f)


def weights_only(args: argparse.Namespace) -> None:
    with np.load(args.data) as z:
        o, c, w = z["open"], z["close"], z["weights"]
    idx = pd.date_range("2000-01-03", periods=len(c), freq="D")
    pf = simulate(pd.DataFrame(o, index=idx), pd.DataFrame(c, index=idx), pd.DataFrame(w, index=idx), True)
    np.save(args.out, pf.value().to_numpy())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["momentum", "weights"])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--lookbacks", type=lambda s: [int(x) for x in s.split(",")], default=[126])
    ap.add_argument("--tops", type=lambda s: [int(x) for x in s.split(",")], default=[2])
    args = ap.parse_args()
    momentum(args) if args.mode == "momentum" else weights_only(args)


if __name__ == "__main__":
    main()

"""bt's trailing stop against vectorbt's ``sl_stop`` with ``sl_trail=True``, where their rules agree.

    python benchmarks/check_trailing.py [--symbols 6] [--bars 2500]

Where they agree (docs/engine.md, "Trailing stop"): entries and exits at the close (bt
``fill="close"``, vectorbt ``price=close``), so vectorbt's reference price (the entry bar's close,
its default ``stop_entry_price``) is bt's entry fill; neither checks the stop on the bar whose close
filled the entry, nor lets that bar's high move the level; both check a gap at the open, then the
low against the level as it stood, then raise it with the bar's high; no fixed stop beside the
trailing one; no slippage (vectorbt's default stop fill pays none). Long-only SMA crosses (bt's
``strategies/sma_cross.py``; the signals are computed once, by bt, and handed to vectorbt so that
only the simulations are compared), commission 0.1 %, all-in sizing.

Prints, per trailing fraction, how many of the tasks agree on every trade's exit price, the
number of trades and the final equity (relative difference ≤ 1e-9), and exits 1 if any does not.
vectorbt runs in the peers' venv (``peerenv``), never in bt's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from backtest.engine import Bars, SimSettings, run_grid
from backtest.engine.indicators import sma_nb
from backtest.engine.signals import cross_target_nb
from backtest.strategy import load_strategy

REPO = Path(__file__).resolve().parent.parent
TRAILS = (0.02, 0.05, 0.1)
COMBOS = ((5, 20), (10, 40), (20, 60))
COMMISSION = 0.001

PEER = r"""
import json, sys
import numpy as np, pandas as pd, vectorbt as vbt
d = np.load(sys.argv[1])
out = []
for s in range(d["close"].shape[0]):
    idx = pd.RangeIndex(d["close"].shape[1])
    o, h, l, c = (pd.Series(d[k][s], index=idx) for k in ("open", "high", "low", "close"))
    for j in range(d["target"].shape[1]):
        t = d["target"][s, j]
        prev = np.r_[0.0, t[:-1]]
        entries = pd.Series((t == 1) & (prev != 1), index=idx)
        exits = pd.Series((t == 0) & (prev == 1), index=idx)
        for trail in d["trails"]:
            pf = vbt.Portfolio.from_signals(c, entries, exits, open=o, high=h, low=l, sl_stop=float(trail),
                                            sl_trail=True, fees=float(d["fees"]), size=np.inf, init_cash=100_000.0,
                                            direction="longonly")
            tr = pf.trades.records_readable
            out.append({"symbol": s, "combo": j, "trail": float(trail), "final": float(pf.final_value()),
                        "exits": [float(x) for x in tr["Avg Exit Price"]],
                        "closed": int((tr["Status"] == "Closed").sum())})
json.dump(out, open(sys.argv[2], "w"))
"""


def walk(seed: int, n: int) -> Bars:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0.0002, 0.015, n)))
    open_ = np.r_[100.0, close[:-1]] * np.exp(rng.normal(0, 0.004, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.006, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.006, n)))
    ts = np.datetime64("2015-01-01", "ns").astype(np.int64) + np.arange(n, dtype=np.int64) * 86_400 * 10**9
    return Bars(f"S{seed}", ts, open_, high, low, close, np.ones(n))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", type=int, default=6)
    ap.add_argument("--bars", type=int, default=2500)
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import peerenv

    peer_python = peerenv.ensure()
    cls = load_strategy(REPO / "strategies" / "sma_cross.py")
    bars = [walk(s, a.bars) for s in range(a.symbols)]
    targets = np.array([[cross_target_nb(sma_nb(b.close, f), sma_nb(b.close, s), False) for f, s in COMBOS]
                        for b in bars])
    ours = {}
    for si, b in enumerate(bars):
        for trail in TRAILS:
            settings = SimSettings(fill="close", trailing_stop=trail, commission=COMMISSION)
            outs = run_grid(cls, b, [{"fast": f, "slow": s} for f, s in COMBOS], settings)
            for j, out in enumerate(outs):
                assert not isinstance(out, Exception), out
                ours[(si, j, trail)] = out
    with tempfile.TemporaryDirectory() as tmp:
        data, answers = Path(tmp) / "bars.npz", Path(tmp) / "vbt.json"
        np.savez(data, open=np.array([b.open for b in bars]), high=np.array([b.high for b in bars]),
                 low=np.array([b.low for b in bars]), close=np.array([b.close for b in bars]), target=targets,
                 trails=np.array(TRAILS), fees=COMMISSION)
        subprocess.run([str(peer_python), "-c", PEER, str(data), str(answers)], check=True)
        theirs = json.loads(answers.read_text())
    bad = 0
    by_trail: dict[float, list[int]] = {t: [0, 0] for t in TRAILS}
    for row in theirs:
        out = ours[(row["symbol"], row["combo"], row["trail"])]
        closed = out.trades[out.trades["closed"]]
        same = (len(closed) == row["closed"]
                and np.allclose(closed["exit_price"], row["exits"][: len(closed)], rtol=1e-12, atol=0)
                and abs(out.metrics["final_equity"] / row["final"] - 1) <= 1e-9)
        by_trail[row["trail"]][0] += same
        by_trail[row["trail"]][1] += 1
        if not same:
            bad += 1
            print(f"differs: symbol {row['symbol']} combo {COMBOS[row['combo']]} trail {row['trail']}: bt "
                  f"{len(closed)} closed trades, final {out.metrics['final_equity']!r}; vectorbt {row['closed']}, "
                  f"{row['final']!r}")
    for trail, (ok, n) in by_trail.items():
        trades = [(k[0], ours[k].trades) for k in ours if k[2] == trail]
        total = sum(len(t) for _, t in trades)
        stopped = sum(int(np.sum(t["closed"] & (t["exit_price"] != bars[s].close[t["exit_index"]]))) for s, t in trades)
        print(f"trailing {trail:g}: {ok}/{n} tasks agree (exit prices, closed trades, final equity); "
              f"{total} trades, {stopped} of them closed by the trailing stop")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())

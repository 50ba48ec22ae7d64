"""vectorbt side of the SMA workloads. Runs in the peers' venv (benchmarks/.peers/), never in bt's.

    python benchmarks/peers/vectorbt_sma.py --data FILE.npz --out answers.json [--symbols 0,3|all]
        [--combos all|5:20,10:40] [--grid sma_grid|small] [--bars N] [--jobs N] [--batch symbol|all]

Semantics (bt's, docs/engine.md; long-only SMA cross): SMAs of close (``vbt.MA``, one run over the distinct
windows, shared by every combo); entries where fast crosses above slow *strictly*
(f[t-1] < s[t-1] and f[t] > s[t], NaN is no cross), exits where it crosses below; both shifted one
bar and filled at ``price=open`` (the next bar's open); ``fees`` 0.1 % per side; ``size=np.inf``
(all in: vectorbt buys cash / (open·(1 + fees)) units, fractional); ``init_cash`` 100 000; long
only; a position open at the end is valued at the last close. Then ``pf.stats(agg_func=None)``:
vectorbt's full default metric set for every column (annualised with ``freq`` = the bar and
``year_freq`` = 252 days' worth of bars). Final equity and trade counts are read from those stats.

``--batch symbol`` (default) runs one portfolio per symbol (its combos as columns), which keeps
memory near one symbol's worth; ``--batch all`` puts every symbol x combo in one portfolio (the
efficient shape for many short series). ``--jobs N`` splits symbols over N forked processes.
``--prewarm`` first runs the same pipeline on 500 bars x 2 combos, so numba compiles vectorbt's
kernels before the timed part; its time (almost all JIT compilation: most of vectorbt's kernels
are not cached on disk) is reported as ``prewarm_s``, so the harness can state the time with and
without it.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import gc  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402
import numpy as np  # noqa: E402

from peers import args as peer_args  # noqa: E402


def strict_cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """out[t] = a[t-1] < b[t-1] and a[t] > b[t] (columns of 2-D arrays); out[0] = False."""
    out = np.zeros(a.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        out[1:] = (a[:-1] < b[:-1]) & (a[1:] > b[1:])
    return out


def shift1(x: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    out[1:] = x[:-1]
    return out


def run_block(
    data: common.SyntheticData, sym_idx: list[int], combos: list[tuple[int, int]], bars: int
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """One vectorbt portfolio over ``sym_idx`` x ``combos`` columns; returns answers and timings."""
    import pandas as pd
    import vectorbt as vbt

    t = time.perf_counter()
    freq = pd.Timedelta(data.bar_ns, unit="ns")
    vbt.settings.returns["year_freq"] = freq * (252 * data.bars_per_day)
    # tz-naive (UTC implied): with a tz-aware index, pandas 3 turns the index into an object array of
    # Timestamps each time vectorbt checks shapes, which would more than double its stats time.
    index = pd.DatetimeIndex(data.ts[:bars].view("datetime64[ns]"))
    windows = sorted({w for c in combos for w in c})
    col_of = {w: j for j, w in enumerate(windows)}
    fi = [col_of[f] for f, _ in combos]
    si = [col_of[s] for _, s in combos]
    ent, ext, close_cols, open_cols = [], [], [], []
    for i in sym_idx:
        close = pd.Series(data.close[i, :bars], index=index)
        mas = vbt.MA.run(close, window=windows, short_name="ma").ma.to_numpy()
        f, s = mas[:, fi], mas[:, si]
        ent.append(shift1(strict_cross(f, s)))
        ext.append(shift1(strict_cross(s, f)))
        close_cols.append(np.repeat(data.close[i, :bars, None], len(combos), axis=1))
        open_cols.append(np.repeat(data.open[i, :bars, None], len(combos), axis=1))
    columns = pd.MultiIndex.from_tuples(
        [(data.symbols[i], f, s) for i in sym_idx for f, s in combos], names=["symbol", "fast", "slow"]
    )

    def frame(parts: list[np.ndarray]) -> pd.DataFrame:
        return pd.DataFrame(np.concatenate(parts, axis=1), index=index, columns=columns)

    close_df, open_df = frame(close_cols), frame(open_cols)
    entries, exits = frame(ent), frame(ext)
    del ent, ext, close_cols, open_cols
    t_signals = time.perf_counter()
    pf = vbt.Portfolio.from_signals(
        close_df,
        entries,
        exits,
        price=open_df,
        fees=common.COMMISSION,
        slippage=common.SLIPPAGE,
        size=np.inf,
        init_cash=common.CASH,
        direction="longonly",
        freq=freq,
    )
    t_sim = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = pf.stats(agg_func=None)
    t_stats = time.perf_counter()
    tasks = []
    for (sym, fast, slow), row in stats.iterrows():
        tasks.append(
            {
                "symbol": sym,
                "fast": int(fast),
                "slow": int(slow),
                "final_equity": float(row["End Value"]),
                "trades": int(row["Total Trades"]),
                "closed_trades": int(row["Total Closed Trades"]),
            }
        )
    phases = {
        "signals_s": t_signals - t,
        "simulate_s": t_sim - t_signals,
        "stats_s": t_stats - t_sim,
        "tasks_s": t_stats - t,
    }
    return tasks, phases


def _worker(
    job: tuple[str, list[int], list[tuple[int, int]], int],
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    path, sym_idx, combos, bars = job
    try:
        return run_block(common.load_data(path), sym_idx, combos, bars)
    finally:
        gc.collect()  # see main()


def main() -> None:
    ap = peer_args.parser(__doc__)
    ap.add_argument("--batch", choices=["symbol", "all"], default="symbol")
    ap.add_argument(
        "--prewarm",
        action="store_true",
        help="first run 2 combos on 500 bars (numba compiles the same specialisations), timed as prewarm_s",
    )
    a = ap.parse_args()
    import pandas as pd
    import vectorbt as vbt

    t_import = time.perf_counter()
    data = common.load_data(a.data)
    sym_idx, combos, bars = peer_args.selection(a, data)
    t_load = time.perf_counter()
    prewarm_s = 0.0
    if a.prewarm:
        run_block(data, sym_idx[:1], combos[:2], min(bars, 500))
        prewarm_s = time.perf_counter() - t_load
        t_load = time.perf_counter()
    blocks = [[i] for i in sym_idx] if a.batch == "symbol" else [sym_idx]
    jobs = [(str(a.data), b, combos, bars) for b in blocks]
    if a.jobs > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(a.jobs) as pool:
            results = pool.map(_worker, jobs, chunksize=1)
    else:
        results = []
        for b in blocks:
            results.append(run_block(data, b, combos, bars))
            # vectorbt's portfolios are reference cycles: without a collection here the dead ones
            # of earlier symbols piled up (16-18 GB after 20 symbols instead of ~1.8 GB).
            gc.collect()
    t_tasks = time.perf_counter()
    tasks = [t for r, _ in results for t in r]
    phases: dict[str, float] = {"import_s": t_import - T0, "load_s": t_load - t_import - prewarm_s}
    if a.prewarm:
        phases["prewarm_s"] = prewarm_s
    for _, ph in results:  # summed over blocks (and over processes with --jobs > 1)
        for k, v in ph.items():
            phases[k] = phases.get(k, 0.0) + v
    phases["tasks_s"] = t_tasks - t_load  # wall time of all blocks: the part that scales with the job
    common.write_answers(
        a.out,
        "vectorbt",
        a.grid,
        tasks,
        phases=phases,
        versions={
            "vectorbt": vbt.__version__,
            "pandas": pd.__version__,
            "numpy": np.__version__,
            "numba": __import__("numba").__version__,
        },
        settings={
            "batch": a.batch,
            "jobs": a.jobs,
            "bars": bars,
            "symbols": len(sym_idx),
            "combos": len(combos),
        },
    )


if __name__ == "__main__":
    main()

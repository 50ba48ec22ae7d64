"""Time the engine alone: ``run_grid`` over the SMA-cross grid on synthetic minute bars.

    python benchmarks/bench_engine.py [--symbols 20] [--bars 98280] [--repeats 3]

20 symbols × 98 280 one-minute bars (252 days × 390) × the 90-combo grid of ``strategies/
sma_cross.py`` (fast 5..50 step 5, slow 20..200 step 20, fast < slow, long-only), commission
0.001, all metrics and trades. One process, one core. Compilation happens in an untimed warm-up
run; the best of ``--repeats`` timed runs is reported as bar-evaluations per second
(symbols × bars × combos / seconds). Not a test: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from backtest.engine import Bars, SimSettings, run_grid
from backtest.strategy import expand_grid, load_strategy, parse_param_specs

REPO = Path(__file__).resolve().parent.parent


def synthetic_minute_bars(symbol_index: int, n: int) -> Bars:
    """Geometric random walk, 390 one-minute bars a day from 14:30 UTC on weekdays (seeded)."""
    rng = np.random.default_rng(1000 + symbol_index)
    sigma = 0.2 / np.sqrt(252 * 390) * rng.uniform(0.5, 2.0)
    log_ret = rng.normal(0.0, sigma, n)
    close = 100.0 * np.exp(np.cumsum(log_ret))
    open_ = np.empty(n)
    open_[0] = 100.0
    open_[1:] = close[:-1] * np.exp(rng.normal(0.0, sigma / 4, n - 1))
    wick = np.abs(rng.normal(0.0, sigma / 2, (2, n)))
    high = np.maximum(open_, close) * np.exp(wick[0])
    low = np.minimum(open_, close) * np.exp(-wick[1])
    day, minute = np.divmod(np.arange(n, dtype=np.int64), 390)
    week, weekday = np.divmod(day, 5)
    start = np.datetime64("2021-01-04T14:30", "ns").astype(np.int64)
    ts = start + (week * 7 + weekday) * 86_400 * 10**9 + minute * 60 * 10**9
    return Bars(f"SYM{symbol_index:02d}", ts, open_, high, low, close, np.ones(n), start=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", type=int, default=20)
    ap.add_argument("--bars", type=int, default=98_280)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    cls = load_strategy(REPO / "strategies" / "sma_cross.py")
    grid = expand_grid(cls, parse_param_specs(cls, ["fast=5:50:5", "slow=20:200:20", "short=false"]))
    settings = SimSettings(cash=100_000.0, commission=0.001)
    symbols = [synthetic_minute_bars(i, a.bars) for i in range(a.symbols)]

    t = time.perf_counter()
    warm = run_grid(cls, symbols[0], grid, settings)  # compiles, or loads numba's cache
    first = time.perf_counter() - t
    assert all(not isinstance(o, Exception) for o in warm), warm

    evals = a.symbols * a.bars * len(grid)
    times = []
    cpu_times = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        c = time.process_time()
        for bars in symbols:
            outputs = run_grid(cls, bars, grid, settings)
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - c)
    trades = sum(int(o.metrics["trades"]) for o in outputs if not isinstance(o, Exception))
    best = min(times)
    print(f"grid: {len(grid)} combos x {a.symbols} symbols x {a.bars} bars = {evals:,} bar-evaluations")
    print(f"first run_grid (compile or cache load + 1 symbol): {first:.2f} s")
    print(f"timed runs (wall): {', '.join(f'{x:.3f}' for x in times)} s  (last symbol: {trades} trades)")
    print(f"timed runs (CPU):  {', '.join(f'{x:.3f}' for x in cpu_times)} s")
    print(f"best wall: {best:.3f} s = {evals / best:.3g} bar-evaluations/s on 1 core")
    print(f"best CPU:  {min(cpu_times):.3f} s = {evals / min(cpu_times):.3g} bar-evaluations/s per core-second")


if __name__ == "__main__":
    main()

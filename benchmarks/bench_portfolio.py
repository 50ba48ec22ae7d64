"""The portfolio suite: cross-sectional momentum on 100 symbols x 10 years of daily bars x 120
parameter sets, bt end to end against vectorbt's ``from_orders`` with cash sharing, answers checked.

- bt: ``bt run strategies/xs_momentum.py --universe universe100.txt --param lookback=21:252:21
  --param top=1:10 --force`` in a fresh process (its data store is written once, in ``.work``).
- vectorbt: ``peers/vectorbt_portfolio.py momentum`` in a fresh process of the peers' venv:
  signals with pandas, one ``from_orders`` over all 120 sets (cash shared per set).
- Answers: every set's final equity, total return and Sharpe ratio, bt's against vectorbt's, to
  1e-9 relative.
- Kernel: ``portfolio_nb`` against ``plain_nb`` (below: the same orders, executed with no trade
  bookkeeping, no tolerance rules, no ordering beyond sells before buys) on the same weights,
  in this process; the target is at most 2x.
- Real data: bt's strategy's weights on the daily AAPL, GOOG and SPY files of ``../shared/data``
  over their common dates (when that folder is there), simulated by bt and by vectorbt; the value
  series must agree to 1e-9 relative.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import NS_PER_DAY, WORK_DIR, DataSpec, ensure_data, load_data
from measure import Measurement, measure_repeats, python_env

REPO = Path(__file__).resolve().parents[1]
SPEC = DataSpec("portfolio", symbols=100, days=2520, bars_per_day=1, bar_ns=NS_PER_DAY, first_day="2015-01-02")
LOOKBACKS = list(range(21, 253, 21))  # 12
TOPS = list(range(1, 11))  # 10 → 120 sets
STRATEGY = REPO / "strategies" / "xs_momentum.py"
SHARED = REPO.parent / "shared" / "data"
TOLERANCE = 1e-9


def bt_root(progress: Any = print) -> tuple[Path, Path]:
    """The data root holding the 100 symbols (written once) and the universe file naming them."""
    data = load_data(ensure_data(SPEC))
    root = WORK_DIR / f"bt-root-portfolio-{SPEC.file_name.removesuffix('.npz')}"
    universe = root / "universe100.txt"
    if not universe.exists():
        from backtest.data import Store

        progress(f"writing the portfolio suite's data store ({len(data.symbols)} symbols) to {root} ...")
        store = Store(root)
        for j, sym in enumerate(data.symbols):
            store.import_arrays(sym, data.ts, data.open[j], data.high[j], data.low[j], data.close[j], data.volume[j])
        universe.write_text("\n".join(data.symbols) + "\n")
    return root, universe


def bt_argv(root: Path, universe: Path) -> list[str]:
    from bt_side import bt_command

    return [*bt_command(), "--data", str(root), "run", str(STRATEGY), "--universe", str(universe),
            "--param", f"lookback={LOOKBACKS[0]}:{LOOKBACKS[-1]}:21", "--param", f"top={TOPS[0]}:{TOPS[-1]}",
            "--force", "--json"]


def bt_answers(root: Path, run_id: str) -> dict[str, dict[str, float]]:
    from bt_side import bt_command

    out = subprocess.run([*bt_command(), "--data", str(root), "report", run_id, "--format", "json"],
                         capture_output=True, text=True, check=True, env=python_env())
    return {f"{r['params']['lookback']},{r['params']['top']}": r["metrics"] for r in json.loads(out.stdout)}


def compare(bt: dict[str, dict[str, float]], peer: dict[str, dict[str, float]]) -> tuple[int, float, list[str]]:
    """(sets compared, the largest relative difference, what disagrees)."""
    worst = 0.0
    bad = []
    for key, want in peer.items():
        got = bt.get(key)
        if got is None:
            bad.append(f"{key}: missing in bt")
            continue
        for m in ("final_equity", "total_return", "sharpe"):
            a, b = float(got[m]), float(want[m])
            rel = abs(a - b) / max(abs(b), 1e-300)
            worst = max(worst, rel)
            if rel > TOLERANCE:
                bad.append(f"{key} {m}: bt {a!r}, vectorbt {b!r}")
    return len(peer), worst, bad


# ---------------------------------------------------------------------------------- the kernel


def plain_loop():  # noqa: ANN201 - a numba function
    """The simplest numba loop over the same orders: value once per executing bar, every sell
    then every buy (cut to the cash), equity at every close; no lots, no trades, no metrics."""
    from numba import njit

    @njit(cache=True)
    def plain_nb(open_, close, weights, cash, equity):
        n, m = close.shape
        units = np.zeros(m)
        for i in range(n):
            if i >= 1:
                row = weights[i - 1]
                if not np.isnan(row).all():
                    value = cash
                    for j in range(m):
                        value += units[j] * open_[i, j]
                    for side in range(2):
                        for j in range(m):
                            if np.isnan(row[j]):
                                continue
                            delta = row[j] * value / open_[i, j] - units[j]
                            if side == 0 and delta < 0:
                                cash -= delta * open_[i, j]
                                units[j] += delta
                            elif side == 1 and delta > 0:
                                size = min(delta, cash / open_[i, j])
                                cash -= size * open_[i, j]
                                units[j] += size
            eq = cash
            for j in range(m):
                eq += units[j] * close[i, j]
            equity[i] = eq

    return plain_nb


def kernel_ratio(repeats: int = 7) -> tuple[float, float, float]:
    """(portfolio_nb's median seconds per set, plain_nb's, largest relative equity difference)
    over the 120 sets' weights of the suite's data, no costs."""
    from backtest.engine.portfolio import portfolio_nb
    from backtest.engine.records import PORTFOLIO_TRADE_DTYPE
    from backtest.engine.universe import Universe
    from backtest.strategy import load_strategy

    data = load_data(ensure_data(SPEC))
    c, o = np.ascontiguousarray(data.close.T), np.ascontiguousarray(data.open.T)
    u = Universe(data.symbols, data.ts, o, o, o, c, c)
    cls = load_strategy(STRATEGY)
    sets = [cls(lookback=lb, top=top) for lb in LOOKBACKS for top in TOPS]
    cache: dict[Any, Any] = {}
    weights = []
    for s in sets:
        s._bt_cache = cache
        weights.append(np.ascontiguousarray(s.weights(u)))
    plain = plain_loop()
    n = len(u.ts)
    eq_a, eq_b = np.empty(n), np.empty(n)
    portfolio_nb(u.ts, o, c, weights[0], 0, 1e5, 0.0, 0.0, 0.0, False, False, 252.0, 0.0, eq_a, PORTFOLIO_TRADE_DTYPE)
    plain(o, c, weights[0], 1e5, eq_b)  # compiled (or loaded) before timing
    times_a, times_b, worst = [], [], 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for w in weights:
            portfolio_nb(u.ts, o, c, w, 0, 1e5, 0.0, 0.0, 0.0, False, False, 252.0, 0.0, eq_a, PORTFOLIO_TRADE_DTYPE)
        t1 = time.perf_counter()
        for w in weights:
            plain(o, c, w, 1e5, eq_b)
        t2 = time.perf_counter()
        times_a.append((t1 - t0) / len(weights))
        times_b.append((t2 - t1) / len(weights))
    for w in weights[:10]:
        portfolio_nb(u.ts, o, c, w, 0, 1e5, 0.0, 0.0, 0.0, False, False, 252.0, 0.0, eq_a, PORTFOLIO_TRADE_DTYPE)
        plain(o, c, w, 1e5, eq_b)
        worst = max(worst, float(np.max(np.abs(eq_a - eq_b) / np.abs(eq_b))))
    return statistics.median(times_a), statistics.median(times_b), worst


# ---------------------------------------------------------------------------------- real data


def real_data_check(peer_python: str, work: Path) -> str:
    """bt's momentum weights on AAPL, GOOG and SPY (``../shared/data``), simulated by bt and by
    vectorbt: one line saying how far apart the value series are, or why it was not run."""
    import pandas as pd

    from backtest.engine import SimSettings, run_grid
    from backtest.engine.universe import Universe
    from backtest.strategy import load_strategy

    files = {s: next(iter(SHARED.glob(f"yahoofinance-{s}-*.csv")), None) for s in ("AAPL", "GOOG", "SPY")}
    if not all(files.values()):
        return f"real-data check: skipped ({SHARED} with the AAPL, GOOG and SPY files is not here)"
    frames = {s: pd.read_csv(p, parse_dates=["Date"]).set_index("Date") for s, p in files.items()}
    common_dates = sorted(set.intersection(*(set(f.index) for f in frames.values())))
    o = np.column_stack([frames[s].loc[common_dates, "Open"].to_numpy(float) for s in files])
    c = np.column_stack([frames[s].loc[common_dates, "Close"].to_numpy(float) for s in files])
    ts = pd.DatetimeIndex(common_dates).tz_localize("UTC").asi8
    u = Universe(tuple(files), ts, o, o, o, c, c)
    cls = load_strategy(STRATEGY)
    worst, sets = 0.0, 0
    for lookback, top in ((21, 1), (63, 1), (126, 2), (252, 2)):
        w = np.ascontiguousarray(cls(lookback=lookback, top=top).weights(u))
        (out,) = run_grid(cls, u, [{"lookback": lookback, "top": top}], SimSettings(), want_equity=True)
        path = work / "real-weights.npz"
        np.savez(path, open=o, close=c, weights=w)
        subprocess.run([peer_python, str(REPO / "benchmarks" / "peers" / "vectorbt_portfolio.py"), "weights",
                        "--data", str(path), "--out", str(work / "real-value.npy")], check=True,
                       capture_output=True, env=python_env())
        value = np.load(work / "real-value.npy")
        worst = max(worst, float(np.max(np.abs(out.equity - value) / np.abs(value))))
        sets += 1
    verdict = "agree" if worst <= TOLERANCE else "DISAGREE"
    return (f"real-data check (AAPL, GOOG, SPY daily, {len(common_dates)} common dates, {sets} parameter sets): "
            f"bt and vectorbt {verdict}; largest relative difference of the value series {worst:.2e}")


def run_suite(h: Any) -> Any:
    """The suite for benchmarks/run.py's harness ``h``."""
    from report import SuiteResult

    s = SuiteResult("portfolio", "Portfolio: cross-sectional momentum, 100 symbols x 2 520 daily bars x 120 "
                                 "parameter sets, one account per set (cash shared)")
    root, universe = bt_root(h.say)
    bar_evals = SPEC.symbols * SPEC.bars * len(LOOKBACKS) * len(TOPS)
    argv = bt_argv(root, universe)
    warm = subprocess.run(argv, capture_output=True, text=True, env=python_env())
    if warm.returncode != 0:
        s.notes.append(f"bt run failed: {warm.stderr.strip()[-500:]}")
        return s
    run_id = json.loads(warm.stdout.strip().splitlines()[-1])["run_id"]
    m = Measurement("bt", "portfolio", "bt run, end to end (fresh process, --force)", bar_evals)
    s.rows.append(measure_repeats(m, lambda i: (argv, python_env(), REPO), h.ctx.repeats, timeout=h.ctx.timeout,
                                  progress=h.say))
    if h.wants("vectorbt") and h.peer_python is not None:
        work = WORK_DIR / "portfolio-bench"
        work.mkdir(parents=True, exist_ok=True)
        out = work / "vectorbt.json"
        peer_argv = [str(h.peer_python), str(REPO / "benchmarks" / "peers" / "vectorbt_portfolio.py"), "momentum",
                     "--data", str(ensure_data(SPEC)), "--out", str(out),
                     "--lookbacks", ",".join(map(str, LOOKBACKS)), "--tops", ",".join(map(str, TOPS))]
        subprocess.run(peer_argv, check=True, capture_output=True, env=python_env())  # warm-up
        pm = Measurement("vectorbt", "portfolio", "from_orders, cash sharing, pandas signals (fresh process)",
                         bar_evals)
        s.rows.append(measure_repeats(pm, lambda i: (peer_argv, python_env(), REPO), h.args.peer_repeats,
                                      timeout=h.ctx.timeout, progress=h.say))
        peer = json.loads(out.read_text())
        n, worst, bad = compare(bt_answers(root, run_id), peer["answers"])
        s.checks.append(f"answers: {n} sets, final equity / total return / Sharpe, largest relative difference "
                        f"{worst:.2e}: " + ("agree" if not bad else f"DISAGREE ({'; '.join(bad[:3])})"))
        phases = peer["phases"]
        s.notes.append("vectorbt phases (last run): " + ", ".join(f"{k} {v:.2f} s" for k, v in phases.items()))
        ratio = pm.wall / m.wall
        s.checks.append(f"throughput: bt {ratio:.1f}x vectorbt's (target >= 10x): " + ("met" if ratio >= 10 else "MISSED"))
        s.checks.append(real_data_check(str(h.peer_python), work))
    ours, plain, diff = kernel_ratio()
    s.checks.append(f"kernel: portfolio_nb {ours * 1e3:.3f} ms a set, a plain numba loop over the same orders "
                    f"{plain * 1e3:.3f} ms ({ours / plain:.2f}x, target <= 2x: {'met' if ours <= 2 * plain else 'MISSED'}; "
                    f"equity agrees to {diff:.1e})")
    return s


if __name__ == "__main__":  # the kernel comparison alone
    sys.path.insert(0, str(REPO))
    a, b, d = kernel_ratio()
    print(f"portfolio_nb {a * 1e3:.3f} ms/set, plain loop {b * 1e3:.3f} ms/set ({a / b:.2f}x), equity diff {d:.1e}")

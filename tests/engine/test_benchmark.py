"""Tasks compared with a benchmark: alpha, beta, information ratio and tracking error against
empyrical on the same returns; alignment by timestamp where the benchmark has no bar."""

from __future__ import annotations

import empyrical
import numpy as np
import pytest

from backtest.engine import Bars, SimSettings, bars_per_year, run_grid
from backtest.engine.metrics import aligned_closes, benchmark_nb
from backtest.strategy import load_strategy

from .helpers import DAY_NS, make_bars
from .test_agreement_backtesting import ROOT

SMA = ROOT / "strategies" / "sma_cross.py"


def returns_of(equity: np.ndarray, cash: float) -> np.ndarray:
    prev = np.concatenate([[cash], equity[:-1]])
    return (equity - prev) / prev


def expected(equity: np.ndarray, cash: float, closes: np.ndarray, bpy: float) -> dict[str, float]:
    """The metrics by empyrical (and numpy for what empyrical lacks) on the bars where the
    benchmark's return is known."""
    r = returns_of(equity, cash)
    b = closes[1:] / closes[:-1] - 1.0
    keep = ~np.isnan(b)
    r, b = r[keep], b[keep]
    alpha, beta = empyrical.alpha_beta(r, b, annualization=bpy)
    active = r - b
    known = closes[~np.isnan(closes)]
    return {"alpha": alpha, "beta": beta,
            "information_ratio": empyrical.excess_sharpe(r, b) * np.sqrt(bpy),
            "tracking_error": np.std(active, ddof=1) * np.sqrt(bpy),
            "benchmark_return": known[-1] / known[0] - 1.0}


def check(bars: Bars, bench: Bars, settings: SimSettings, params: dict) -> dict[str, float]:
    cls = load_strategy(SMA)
    (out,) = run_grid(cls, bars, [params], settings, want_equity=True, benchmark=bench)
    (plain,) = run_grid(cls, bars, [params], settings)
    assert all(out.metrics[k] == plain.metrics[k] or np.isnan(plain.metrics[k]) for k in plain.metrics)
    closes = aligned_closes(bars.ts, bars.start, bench.ts, bench.close)
    assert out.benchmark is not None and np.array_equal(out.benchmark, closes, equal_nan=True)
    want = expected(out.equity, settings.cash, closes, bars_per_year(bars.ts))
    for k, v in want.items():
        assert out.metrics[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
    return out.metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_empyrical_on_made_data(seed):
    bars = make_bars(1500, seed=seed, start=200)
    bench = make_bars(1500, seed=100 + seed, vol=0.008)
    m = check(bars, bench, SimSettings(commission=0.001), {"fast": 10, "slow": 40, "short": seed == 1})
    assert m["tracking_error"] > 0 and -1 < m["beta"] < 1


def test_equal_empyrical_on_goog_against_a_made_benchmark():
    pytest.importorskip("backtesting")
    from .test_agreement_backtesting import goog_bars

    goog = goog_bars()
    rng = np.random.default_rng(7)
    # a benchmark that moves partly with GOOG: beta clearly away from 0
    move = 0.6 * np.diff(np.log(goog.close), prepend=np.log(goog.close[0])) + rng.normal(0, 0.006, len(goog))
    close = 100 * np.exp(np.cumsum(move))
    bench = Bars("BENCH", goog.ts.copy(), close, close * 1.01, close * 0.99, close, np.ones(len(close)))
    m = check(goog, bench, SimSettings(cash=10_000.0, commission=0.002, units="integer"),
              {"fast": 10, "slow": 20, "short": True})
    assert m["beta"] != 0 and np.isfinite(m["alpha"])


def test_alignment_where_the_benchmark_has_no_bar():
    bars = make_bars(400, seed=3, start=50)
    full = make_bars(400, seed=4)
    # the benchmark starts 100 bars late and misses every fifth bar after that
    keep = np.arange(400) >= 100
    keep &= np.arange(400) % 5 != 0
    bench = Bars("B", full.ts[keep], full.open[keep], full.high[keep], full.low[keep], full.close[keep],
                 full.volume[keep])
    closes = aligned_closes(bars.ts, bars.start, bench.ts, bench.close)
    assert closes.shape == (400 - 50 + 1,)
    assert np.isnan(closes[: 100 - 49]).all()  # nothing before its first bar
    i = 105 - 49  # bar 105 has no benchmark bar: the close of bar 104 carries
    assert closes[i] == full.close[104] and closes[i + 1] == full.close[106]
    check(bars, bench, SimSettings(), {"fast": 5, "slow": 20, "short": False})


def test_a_benchmark_known_nowhere_gives_nan():
    bars = make_bars(300, seed=1, start=20)
    later = make_bars(10, seed=2)
    later = Bars("L", later.ts + 10_000 * DAY_NS, later.open, later.high, later.low, later.close, later.volume)
    closes = aligned_closes(bars.ts, bars.start, later.ts, later.close)
    assert np.isnan(closes).all()
    assert np.isnan(benchmark_nb(np.full(280, 1e5), 1e5, closes, 252.0)).all()


def test_the_first_bar_without_a_bar_before_it():
    bars = make_bars(200, seed=5, start=0)
    closes = aligned_closes(bars.ts, 0, bars.ts, bars.close)
    assert np.isnan(closes[0]) and np.array_equal(closes[1:], bars.close)
    # against itself, long all the time, no costs: beta 1 and no active return after the first bar
    out = benchmark_nb(bars.close / bars.close[0] * 1e5, 1e5, closes, 252.0)
    assert out[1] == pytest.approx(1.0, rel=1e-12) and out[3] == pytest.approx(0.0, abs=1e-12)


def test_the_catalog_has_a_column_for_every_metric():
    from backtest.catalog.schema import METRICS, OPTIONAL_METRICS
    from backtest.engine import METRIC_NAMES
    from backtest.engine.metrics import BENCHMARK_METRICS

    assert METRICS == METRIC_NAMES and OPTIONAL_METRICS == ("orders", *BENCHMARK_METRICS)

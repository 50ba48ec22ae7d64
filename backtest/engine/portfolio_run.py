"""``run_portfolio_grid``: one universe × many parameter sets of a portfolio strategy.

Like ``run.run_grid`` for one symbol: indicators are shared across the grid through one cache,
the strategy's ``weights`` are checked once per set, and one kernel call (``portfolio.portfolio_nb``)
simulates each set. A strategy that raises or returns bad weights fails that set only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from backtest.engine.metrics import aligned_closes, bars_per_year
from backtest.engine.orders import excursions_nb
from backtest.engine.portfolio import portfolio_nb
from backtest.engine.records import PORTFOLIO_METRIC_NAMES, PORTFOLIO_TRADE_DTYPE, TaskOutput
from backtest.engine.run import call_strategy, compared, label, when
from backtest.engine.settings import SimSettings
from backtest.engine.universe import Universe
from backtest.errors import StrategyError

#: how far (absolute) a row's sum of |weight| may exceed the leverage: rounding, not intent
LEVERAGE_SLACK = 1e-9


def run_portfolio_grid(
    strategy_cls: Any,
    u: Universe,
    params_list: Sequence[dict[str, Any]],
    each: Sequence[SimSettings],
    *,
    want_equity: bool = False,
    benchmark: Any = None,
) -> list[TaskOutput | StrategyError]:
    """One ``TaskOutput`` (metrics ``PORTFOLIO_METRIC_NAMES``, trades ``PORTFOLIO_TRADE_DTYPE``) or
    ``StrategyError`` per parameter dict (simulated with the settings ``each`` gives it), in
    order. Orders skipped because a symbol had no bar at the executing bar are counted on stdout
    (the task's log)."""
    cache: dict[Any, Any] = {}
    bpy = bars_per_year(u.ts)
    hold = buy_and_hold(u)
    bench = None if benchmark is None else aligned_closes(u.ts, u.start, benchmark.ts, benchmark.close)
    out: list[TaskOutput | StrategyError] = []
    for params, settings in zip(params_list, each, strict=True):
        try:
            raw = call_strategy(strategy_cls, params, cache, "weights", u, u.symbol)
            w = checked_weights(raw, u, label(strategy_cls, params, u.symbol), settings.leverage)
            done = _simulate(u, w, settings, bpy, hold, want_equity or bench is not None, strategy_cls, params,
                             want_equity)
            out.append(done if bench is None else compared(done, bench, settings.cash, bpy, want_equity))
        except StrategyError as exc:
            out.append(exc)
    return out


def _simulate(u: Universe, w: np.ndarray, settings: SimSettings, bpy: float, hold: float, want_equity: bool,
              strategy_cls: Any, params: dict[str, Any], excursions: bool) -> TaskOutput:
    equity = np.empty(max(len(u) - u.start, 0))
    trades, metrics, orders, skipped = portfolio_nb(
        u.ts, u.open, u.close, w, u.start, settings.cash, settings.commission, settings.fee, settings.slippage,
        settings.fill == "close", settings.units == "integer", bpy, hold, equity, PORTFOLIO_TRADE_DTYPE,
    )
    if excursions:  # from each trade's own symbol's bars
        excursions_nb(trades, u.high, u.low)
    if skipped:
        print(f"bt: {label(strategy_cls, params, u.symbol)}: {skipped} orders skipped at bars where their symbol "
              "had no bar")
    values = [*metrics.tolist(), float(orders)]
    return TaskOutput(metrics=dict(zip(PORTFOLIO_METRIC_NAMES, values, strict=True)), trades=trades,
                      equity=equity if want_equity else None, symbols=u.symbols)


def buy_and_hold(u: Universe) -> float:
    """The mean over the symbols of last close / first close − 1, from ``u.start`` on (symbols
    with no bar there left out): an equal-weight buy and hold without costs."""
    closes = u.close[u.start:]
    returns = []
    for j in range(closes.shape[1]):
        c = closes[:, j]
        valid = np.flatnonzero(~np.isnan(c))
        if valid.size:
            returns.append(c[valid[-1]] / c[valid[0]] - 1.0)
    return float(np.mean(returns)) if returns else float("nan")


def checked_weights(raw: Any, u: Universe, name: str, leverage: float) -> np.ndarray:
    """``raw`` as a C-contiguous float64 (bars × symbols) array, or a StrategyError naming what is
    wrong (and the first bad bar): not numbers, the wrong shape, ±inf from the start on, or a row
    whose sum of |weight| exceeds ``leverage``."""
    n, m = len(u), len(u.symbols)
    if not (type(raw) is np.ndarray and raw.dtype == np.float64):
        if isinstance(raw, np.ndarray) and raw.dtype.kind not in "biuf":
            raise StrategyError(f"{name}: weights returned an array of {raw.dtype}, not numbers; return a float array "
                                f"of shape ({n}, {m})")
        try:
            raw = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError):
            raise StrategyError(f"{name}: weights returned {type(raw).__name__}, not numbers; return a float array "
                                f"of shape ({n}, {m}) (bars × symbols)") from None
    if raw.shape != (n, m):
        raise StrategyError(f"{name}: weights returned shape {raw.shape} for {n} bars × {m} symbols; return a float "
                            f"array of shape ({n}, {m})")
    w = np.ascontiguousarray(raw)
    live = w[u.start:]
    inf = np.isinf(live)
    if inf.any():
        bar = u.start + int(np.flatnonzero(inf.any(axis=1))[0])
        raise StrategyError(f"{name}: weight at bar {bar} ({when(u.ts[bar])}) is infinite; weights must be finite "
                            "numbers (NaN leaves a position as it is)")
    gross = np.nansum(np.abs(live), axis=1)
    over = gross > leverage + LEVERAGE_SLACK
    if over.any():
        i = int(np.flatnonzero(over)[0])
        bar = u.start + i
        raise StrategyError(f"{name}: weights at bar {bar} ({when(u.ts[bar])}) add up to {gross[i]:.6g} in absolute "
                            f"value, over the leverage limit {leverage:g}; scale them down or raise --leverage")
    return w

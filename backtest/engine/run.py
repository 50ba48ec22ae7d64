"""``run_grid``: one symbol's bars × many parameter sets → one outcome per set.

The wrapper validates and converts once per grid, shares indicators across the grid through
one cache, calls the strategy and one simulation kernel per parameter set, and wraps the result.
A strategy that raises or returns bad targets yields a ``StrategyError`` for that entry only.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from backtest.engine.bars import Bars
from backtest.engine.metrics import BENCHMARK_METRICS, aligned_closes, bars_per_year, benchmark_nb, day_ends
from backtest.engine.records import TRADE_DTYPE, TaskOutput
from backtest.engine.settings import SimSettings
from backtest.engine.sim import simulate_nb
from backtest.errors import BtError, StrategyError

if TYPE_CHECKING:
    from backtest.engine.universe import Universe

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # backtest/


def run_grid(
    strategy_cls: Any,
    bars: Bars | Universe,
    params_list: Sequence[dict[str, Any]],
    settings: SimSettings | Sequence[SimSettings],
    *,
    want_equity: bool = False,
    benchmark: Bars | None = None,
    shared: SharedWindows | None = None,
) -> list[TaskOutput | StrategyError]:
    """Run ``strategy_cls`` with each parameter dict of ``params_list`` over ``bars`` (a
    ``Universe`` for a portfolio strategy: ``portfolio_run.run_portfolio_grid``), with
    ``settings``, or with ``settings[i]`` for ``params_list[i]``.

    Returns one entry per dict, in order: a ``TaskOutput``, or the ``StrategyError`` that task
    raised (``str(err)`` is one line; ``err.details`` holds the user's traceback when there is
    one). Indicators requested through ``Strategy.cached`` are computed once for the whole grid,
    and a parameter set that appears with several settings asks the strategy once. With
    ``benchmark`` (bars of another symbol) each output also has ``metrics.BENCHMARK_METRICS``.
    """
    from backtest.engine.universe import Universe

    single = isinstance(settings, SimSettings)
    each: list[SimSettings] = [settings] * len(params_list) if isinstance(settings, SimSettings) else list(settings)
    if isinstance(bars, Universe):
        from backtest.engine.portfolio_run import run_portfolio_grid

        return run_portfolio_grid(strategy_cls, bars, params_list, each, want_equity=want_equity,
                                  benchmark=benchmark)
    bars = _normalised(bars)
    cache: dict[Any, Any] = {}
    if shared is not None:
        shared.link(cache, bars)
    bpy = bars_per_year(bars.ts)
    ends = day_ends(bars.ts, bars.start)
    args: dict[SimSettings, tuple[Any, ...]] = {}
    # (a SimSettings is hashed field by field: one grid's settings are not hashed once a task)
    targets: dict[str, Any] | None = None if single or len(set(each)) == 1 else {}
    bench = None if benchmark is None else aligned_closes(bars.ts, bars.start, benchmark.ts, benchmark.close)
    outputs: list[TaskOutput | StrategyError] = []
    last: Any = None
    sim_args: tuple[Any, ...] = ()
    for params, s in zip(params_list, each, strict=True):
        if s is not last:
            if s not in args:
                args[s] = (
                    bars.start, s.cash, s.commission, s.fee, s.slippage, s.fill == "close", s.units == "integer",
                    s.stop_loss or 0.0, s.take_profit or 0.0, s.trailing_stop or 0.0, bpy,
                )
            sim_args, last = args[s], s
        try:
            target = strategy_target(strategy_cls, bars, params, cache, targets)
            out = _simulate(strategy_cls, bars, params, target, sim_args, ends, want_equity or bench is not None,
                            want_equity)
            outputs.append(out if bench is None else compared(out, bench, s.cash, bpy, want_equity))
        except StrategyError as exc:
            outputs.append(exc)
    return outputs


#: Key, in a grid's indicator cache, of its ``SharedWindows`` link (a string, unlike every other key)
WINDOWS = "bt:shared-windows"


class SharedWindows:
    """Window kernels (``indicators.SUFFIX_INVARIANT``) computed once on ``bars`` and served to
    every grid that runs on a warm-up cut from them (``bars.close[k:]`` and so on): a worker's
    shard reads its symbol's bars once, for the widest warm-up, and runs each warm-up's tasks on a
    slice of them. A kernel's values on a slice are its values on ``bars`` past the slice's first
    ``n − 1`` bars (NaN), bit for bit, so a task's indicators do not depend on the tasks it shares
    a shard with. ``run_grid(..., shared=...)`` uses it; at most ``limit`` bytes of results are
    kept (beyond that a kernel runs on the slice itself, with the same result).
    """

    def __init__(self, bars: Bars, limit: int = 64 * 1024 * 1024) -> None:
        from backtest.engine.indicators import SUFFIX_INVARIANT

        self.bars = bars
        self.kernels = SUFFIX_INVARIANT
        self.results: dict[tuple[Any, int, int], np.ndarray] = {}
        self.room = limit

    def link(self, cache: dict[Any, Any], sliced: Bars) -> None:
        """Let the strategies of the grid whose indicator cache is ``cache`` draw on this when
        they pass a price array of ``sliced``, if ``sliced`` is a strict suffix of ``self.bars``."""
        offset = self.bars.ts.shape[0] - sliced.ts.shape[0]
        if offset <= 0:
            return
        links = {}
        for name in ("open", "high", "low", "close", "volume"):
            part, whole = getattr(sliced, name), getattr(self.bars, name)
            if (whole.dtype == np.float64 and whole.flags.c_contiguous and part.dtype == np.float64
                    and part.shape[0] == whole.shape[0] - offset
                    and part.__array_interface__["data"][0] == whole.__array_interface__["data"][0] + 8 * offset):
                links[id(part)] = (part, whole, offset)
        if links:
            cache[WINDOWS] = _Linked(self, links)

    def suffix(self, fn: Any, whole: np.ndarray, offset: int, n: int) -> np.ndarray | None:
        """``fn(whole[offset:], n)``, from ``fn(whole, n)`` computed once; None when full."""
        key = (fn, id(whole), n)
        full = self.results.get(key)
        if full is None:
            if self.room <= 0:
                return None
            full = fn(whole, n)
            self.results[key] = full
            self.room -= full.nbytes
        out: np.ndarray = full[offset:].copy()
        out[: n - 1] = np.nan
        return out


class _Linked:
    """``SharedWindows`` as one grid's cache sees it: which of its arrays are cut from which."""

    def __init__(self, shared: SharedWindows, links: dict[int, tuple[np.ndarray, np.ndarray, int]]) -> None:
        self.shared = shared
        self.links = links

    def compute(self, fn: Any, args: tuple[Any, ...]) -> Any:
        if fn in self.shared.kernels and len(args) == 2 and type(args[1]) is int and args[1] >= 1:
            link = self.links.get(id(args[0]))
            if link is not None and link[0] is args[0]:
                out = self.shared.suffix(fn, link[1], link[2], args[1])
                if out is not None:
                    return out
        return fn(*args)


def compared(out: TaskOutput, bench: np.ndarray, cash: float, bpy: float, keep_equity: bool) -> TaskOutput:
    """``out`` with the metrics of its equity against the benchmark's ``bench`` closes
    (``metrics.aligned_closes``); its equity curve dropped unless ``keep_equity``."""
    assert out.equity is not None
    out.metrics.update(zip(BENCHMARK_METRICS, benchmark_nb(out.equity, cash, bench, bpy).tolist(), strict=True))
    if keep_equity:
        out.benchmark = bench
    else:
        out.equity = None
    return out


def strategy_target(strategy_cls: Any, bars: Bars, params: dict[str, Any], cache: dict[Any, Any],
                    targets: dict[str, Any] | None) -> np.ndarray:
    """The checked target series of ``params``; with ``targets``, kept there for the same
    parameters under other settings (a failure is kept, and raised again, too)."""
    if targets is None:
        return _checked_target(call_strategy(strategy_cls, params, cache, "signals", bars, bars.symbol), bars,
                               strategy_cls, params)
    known = repr(sorted(params.items()))
    found = targets.get(known)
    if found is None:
        try:
            found = strategy_target(strategy_cls, bars, params, cache, None)
        except StrategyError as exc:
            found = exc
        targets[known] = found
    if isinstance(found, StrategyError):
        raise found
    return found


def warm_up() -> None:
    """Load (or compile) the simulation kernel for ``_simulate``'s argument types now."""
    ts = np.arange(3, dtype=np.int64) * 60_000_000_000
    x = np.ones(3)
    simulate_nb(ts, x, x, x, x, np.zeros(3), 0, 1.0, 0.0, 0.0, 0.0, False, False, 0.0, 0.0, 0.0,
                bars_per_year(ts), np.empty(0), day_ends(ts, 0), False, TRADE_DTYPE)


def warm_up_all(skip: Any = None) -> None:
    """Load (or compile, and cache) every kernel a strategy's task may call, for the argument
    types bt's own code and the usual strategy passes (float64 arrays, int windows): what a
    sandboxed worker does before it enters its sandbox, where numba's cache is read-only (the
    result encoder's kernel is warmed by the worker, ``worker.tuning.warm_up``). ``skip(kernel)``
    true: leave that kernel to be loaded when first called (it is in the cache already)."""
    from backtest.engine import indicators as ind
    from backtest.engine import signals as sig
    from backtest.engine.orders import excursions_nb
    from backtest.engine.portfolio import portfolio_nb
    from backtest.engine.records import PORTFOLIO_TRADE_DTYPE

    warm_up()
    x = np.linspace(1.0, 2.0, 8)
    flags = x > 1.5
    grid = np.ones((8, 2))
    ts = np.arange(8, dtype=np.int64) * 60_000_000_000
    calls: list[tuple[Any, tuple[Any, ...]]] = [
        *((f, (x, 3)) for f in (ind.sma_nb, ind.ema_nb, ind.zscore_nb, ind.rsi_nb, ind.highest_nb, ind.lowest_nb,
                                ind.rolling_std_nb)),
        (ind.rolling_std_nb, (x, 3, 1)), (ind.rolling_mean_std_nb, (x, 3, 1)), (ind.bollinger_nb, (x, 3, 2.0)),
        (ind.atr_nb, (x, x, x, 3)), (sig.crossover_nb, (x, x)), (sig.crossunder_nb, (x, x)),
        (sig.cross_target_nb, (x, x, False)), (sig.events_target_nb, (flags, flags, flags, flags)),
        (benchmark_nb, (x[1:], 1.0, x, 252.0)),
        (portfolio_nb, (ts, grid, grid, np.zeros((8, 2)), 0, 1.0, 0.0, 0.0, 0.0, False, False, 252.0, 0.0,
                        np.empty(8), PORTFOLIO_TRADE_DTYPE)),
        (excursions_nb, (np.zeros(1, PORTFOLIO_TRADE_DTYPE), grid, grid)),
    ]
    for f, args in calls:
        if skip is None or not skip(f):
            f(*args)


def _normalised(bars: Bars) -> Bars:
    """Bars whose price arrays are contiguous float64 (the kernels' input type)."""
    fields = {}
    for name in ("open", "high", "low", "close", "volume"):
        fields[name] = np.ascontiguousarray(getattr(bars, name), dtype=np.float64)
    ts = np.ascontiguousarray(bars.ts, dtype=np.int64)
    if all(fields[f] is getattr(bars, f) for f in fields) and ts is bars.ts:
        return bars
    return Bars(bars.symbol, ts, start=bars.start, partitions=bars.partitions, **fields)


def label(strategy_cls: Any, params: dict[str, Any], symbol: str) -> str:
    inner = ", ".join(f"{k}={v!r}" for k, v in params.items())
    return f"{getattr(strategy_cls, '__name__', strategy_cls)}({inner}) on {symbol}"


#: the equity array of a simulation that keeps none (the kernel writes into it only when its length
#: is the range's)
_NO_EQUITY = np.empty(0)


def _simulate(
    strategy_cls: Any,
    bars: Bars,
    params: dict[str, Any],
    target: np.ndarray,
    sim_args: tuple[Any, ...],
    ends: np.ndarray,
    want_equity: bool,
    excursions: bool,
) -> TaskOutput:
    """One simulation: the equity curve kept with ``want_equity``, the trades' MAE/MFE filled with
    ``excursions`` (a report re-deriving the task; a grid leaves them NaN)."""
    equity = np.empty(bars.ts.shape[0] - bars.start) if want_equity else _NO_EQUITY
    simulate: Any = simulate_nb
    bad, trades, metrics = simulate(
        bars.ts, bars.open, bars.high, bars.low, bars.close, target, *sim_args, equity, ends, excursions, TRADE_DTYPE
    )
    if bad >= 0:
        raise StrategyError(
            f"{label(strategy_cls, params, bars.symbol)}: target at bar {bad} ({when(bars.ts[bad])}) is {float(target[bad])!r}; targets must be "
            "finite numbers in [-1, 1] from the start date on (NaN is allowed only during warm-up)"
        )
    return TaskOutput(values=metrics, trades=trades, equity=equity if want_equity else None)


def call_strategy(strategy_cls: Any, params: dict[str, Any], cache: dict[Any, Any], method: str, data: Any,
                  symbol: str) -> Any:
    """``strategy_cls(**params).<method>(data)`` with the grid's indicator cache; whatever the user's
    code raises (or a ``sys.exit``) becomes a one-line ``StrategyError`` naming the task."""
    try:
        strategy = strategy_cls(**params)
        strategy._bt_cache = cache
        windows = cache.get(WINDOWS)
        if windows is not None:
            strategy._bt_windows = windows
        return getattr(strategy, method)(data)
    except BtError as exc:
        if isinstance(exc, StrategyError):
            raise
        raise StrategyError(f"{label(strategy_cls, params, symbol)}: {exc}") from exc
    except SystemExit as exc:  # a strategy's sys.exit() fails its task, not the worker running it
        raise StrategyError(f"{label(strategy_cls, params, symbol)}: the strategy called sys.exit({exc.code!r}); "
                            "return an array (or raise an exception) instead") from None
    except Exception as exc:
        real = getattr(strategy_cls, "__bt_cached_file__", "")
        renames = {real: strategy_cls.__bt_filename__} if real else {}
        raise user_error(exc, f"{label(strategy_cls, params, symbol)}: {method} raised", renames) from exc


def _checked_target(raw: Any, bars: Bars, strategy_cls: Any, params: dict[str, Any]) -> np.ndarray:
    n = len(bars)
    if type(raw) is np.ndarray and raw.dtype == np.float64 and raw.ndim == 1 and raw.shape[0] == n:
        return np.ascontiguousarray(raw)  # the usual case, checked cheaply
    name = label(strategy_cls, params, bars.symbol)
    try:
        target = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise StrategyError(
            f"{name}: signals returned {type(raw).__name__}, not numbers; return a float array with "
            f"one target per bar (len {n})"
        ) from exc
    if target.ndim != 1 or target.shape[0] != n:
        got = f"shape {target.shape}" if target.ndim != 1 else f"{target.shape[0]} values"
        raise StrategyError(
            f"{name}: signals returned {got} for {n} bars; return one target per bar (a 1-D float array)"
        )
    return np.ascontiguousarray(target)


def when(ts_ns: Any) -> str:
    return str(np.datetime64(int(ts_ns), "ns").astype("datetime64[s]")).replace("T", " ")


def user_error(exc: BaseException, summary: str, renames: dict[str, str] | None = None) -> StrategyError:
    """A ``StrategyError`` for an exception raised by user code: ``str()`` is one line naming the
    exception and the innermost user frame; ``.details`` is the traceback with bt's own leading
    frames (the engine calling the user) trimmed. ``renames`` maps file names as run to file names
    as shown (a cached copy → the user's path)."""
    frames = list(traceback.extract_tb(exc.__traceback__))
    while frames and _is_engine_file(frames[0].filename):
        frames.pop(0)
    renames = renames or {}
    where = ""
    if frames:
        last = frames[-1]
        where = f" ({renames.get(last.filename, last.filename)}:{last.lineno})"
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    text = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
    lines = ["Traceback (most recent call last):\n"]
    for frame in frames:
        lines.append(f'  File "{renames.get(frame.filename, frame.filename)}", line {frame.lineno}, in {frame.name}\n')
        if frame.line:
            lines.append(f"    {frame.line}\n")
    lines.extend(traceback.format_exception_only(type(exc), exc))
    err = StrategyError(f"{summary} {text}{where}")
    err.details = "".join(lines)
    return err


def _is_engine_file(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE_DIR)

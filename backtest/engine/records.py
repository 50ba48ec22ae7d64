"""Output layouts of a task, declared once: metric names, the trade dtype, its Arrow schema."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

METRIC_NAMES: tuple[str, ...] = (
    "total_return",
    "cagr",
    "volatility",
    "sharpe",
    "sortino",
    "calmar",
    "max_drawdown",
    "max_drawdown_duration",
    "exposure",
    "trades",
    "win_rate",
    "best_trade",
    "worst_trade",
    "avg_trade",
    "profit_factor",
    "expectancy",
    "sqn",
    "final_equity",
    "buy_and_hold_return",
    "avg_drawdown",
    "avg_drawdown_duration",
    "max_drawdown_days",
    "omega",
    "kelly",
    "avg_win",
    "avg_loss",
    "max_consecutive_wins",
    "max_consecutive_losses",
    "max_trade_duration",
    "avg_trade_duration",
    "exposure_adjusted_return",
    "tail_ratio",
)
"""The output contract's metric names, in order. Definitions: docs/engine.md and ``backtest.engine.metrics``."""

TRADE_DTYPE = np.dtype(
    [
        ("entry_time", "<i8"),  # UTC ns of the entry fill's bar
        ("exit_time", "<i8"),  # UTC ns of the exit fill's bar (last bar for a position still open)
        ("side", "i1"),  # +1 long, -1 short
        ("size", "<f8"),  # units, always positive
        ("entry_price", "<f8"),  # fill price, slippage included
        ("exit_price", "<f8"),  # fill price, slippage included; last close for an open position
        ("pnl", "<f8"),  # side·size·(exit − entry) − fees, in cash
        ("return", "<f8"),  # pnl / (size·entry_price)
        ("fees", "<f8"),  # commission + fixed fees of the entry and exit fills attributed to this trade
        ("bars", "<i8"),  # exit_index − entry_index
        ("entry_index", "<i8"),  # bar index of the entry fill in the Bars arrays
        ("exit_index", "<i8"),
        ("closed", "?"),  # False for the position still open at the end (marked to the last close)
        ("mae", "<f8"),  # maximum adverse excursion: the worst price seen while held, vs the entry (≤ 0 mostly)
        ("mfe", "<f8"),  # maximum favourable excursion: the best price seen while held, vs the entry
    ]
)
"""One row per trade (a FIFO lot from its entry fill to the fill that closes it)."""

PORTFOLIO_TRADE_DTYPE = np.dtype(TRADE_DTYPE.descr + [("symbol_index", "<i4")])
"""A portfolio task's trades: ``TRADE_DTYPE`` plus the index of the trade's symbol in the universe."""

PORTFOLIO_METRIC_NAMES: tuple[str, ...] = (*METRIC_NAMES, "orders")
"""A portfolio task's metrics: ``METRIC_NAMES`` plus the number of orders filled."""


def trade_schema() -> pa.Schema:
    """The Arrow schema of ``TRADE_DTYPE``: ``*_time`` fields are ``timestamp[ns, UTC]``."""
    import pyarrow as pa

    fields = []
    for name in TRADE_DTYPE.names or ():
        dtype = TRADE_DTYPE.fields[name][0]  # type: ignore[index]
        if name.endswith("_time"):
            typ = pa.timestamp("ns", tz="UTC")
        else:
            typ = pa.from_numpy_dtype(dtype)
        fields.append(pa.field(name, typ, nullable=False))
    return pa.schema(fields)


def trades_table(trades: np.ndarray) -> pa.Table:
    """A ``TRADE_DTYPE`` array as an Arrow table with ``trade_schema()``."""
    import pyarrow as pa

    schema = trade_schema()
    columns = [pa.array(np.ascontiguousarray(trades[f.name]), type=f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


class TaskOutput:
    """What one task produces. ``metrics`` keys are exactly ``METRIC_NAMES`` (python floats, NaN
    where undefined); ``trades`` is a ``TRADE_DTYPE`` array; ``equity`` holds the equity at each
    bar's close from ``bars.start`` on, or None when not asked for; ``symbols``, a portfolio task's
    symbols in universe order (``trades["symbol_index"]`` indexes them); ``benchmark``, with a
    benchmark and ``equity``, its close at the bar before the first and at each bar
    (``metrics.aligned_closes``).

    The engine gives the metrics as the kernel's array (``values``, in ``names`` order): the dict
    is made when ``metrics`` is first read, and a grid that only stores results takes the array's
    bytes (``metric_block``) without making one (~4 µs a task of a million-task sweep)."""

    __slots__ = ("_metrics", "values", "names", "trades", "equity", "symbols", "benchmark")

    def __init__(self, metrics: dict[str, float] | None = None, trades: np.ndarray | None = None,
                 equity: np.ndarray | None = None, symbols: tuple[str, ...] = (),
                 benchmark: np.ndarray | None = None, *, values: np.ndarray | None = None,
                 names: tuple[str, ...] = METRIC_NAMES) -> None:
        if (metrics is None) == (values is None) or trades is None:
            raise TypeError("a TaskOutput needs trades and either metrics or values")
        self._metrics = metrics
        self.values = values
        self.names = names
        self.trades = trades
        self.equity = equity
        self.symbols = symbols
        self.benchmark = benchmark

    @property
    def metrics(self) -> dict[str, float]:
        if self._metrics is None:
            assert self.values is not None
            self._metrics = dict(zip(self.names, self.values.tolist(), strict=True))
            self.values = None  # the dict is the metrics from now on (it may be changed)
        return self._metrics

    @metrics.setter
    def metrics(self, value: dict[str, float]) -> None:
        self._metrics, self.values = value, None

    def metric_block(self) -> tuple[tuple[str, ...], bytes]:
        """(metric names, their values as little-endian float64), without making the dict."""
        if self.values is not None:
            return self.names, self.values.astype("<f8", copy=False).tobytes()
        names = tuple(self.metrics)
        return names, struct.pack(f"<{len(names)}d", *self.metrics.values())

    def __repr__(self) -> str:
        return f"TaskOutput(metrics={self.metrics!r}, trades=<{len(self.trades)} trades>)"

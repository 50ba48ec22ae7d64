"""The engine: numba kernels (indicators, order simulation, metrics) over NumPy arrays, and the
wrapper ``run_grid`` that converts, calls one kernel per task and wraps the result (STYLE 1, 2).

Imports only numpy and numba (pyarrow lazily inside ``trade_schema``/``trades_table``).
Semantics and metric definitions: docs/engine.md.
"""

from __future__ import annotations

from backtest.engine.bars import Bars
from backtest.engine.metrics import bars_per_year
from backtest.engine.records import METRIC_NAMES, TRADE_DTYPE, TaskOutput, trade_schema, trades_table
from backtest.engine.run import run_grid
from backtest.engine.settings import SimSettings

__all__ = [
    "Bars",
    "METRIC_NAMES",
    "TRADE_DTYPE",
    "SimSettings",
    "TaskOutput",
    "bars_per_year",
    "run_grid",
    "trade_schema",
    "trades_table",
]

"""The engine: numba kernels (indicators, order simulation, metrics) over NumPy arrays, and the
wrapper ``run_grid`` that converts, calls one kernel per task and wraps the result.

Imports only numpy and numba (pyarrow lazily inside ``trade_schema``/``trades_table``).
Semantics and metric definitions: docs/engine.md.

The names below are loaded on first use (PEP 562): ``from backtest.engine.settings import
SimSettings`` or ``backtest.engine.bars`` must not pay for importing numba (half a second), which
the coordinator of a cached rerun never needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backtest.engine.bars import Bars
    from backtest.engine.metrics import bars_per_year
    from backtest.engine.records import METRIC_NAMES, TRADE_DTYPE, TaskOutput, trade_schema, trades_table
    from backtest.engine.run import run_grid
    from backtest.engine.settings import SimSettings

_WHERE = {
    "Bars": "bars",
    "bars_per_year": "metrics",
    "METRIC_NAMES": "records",
    "TRADE_DTYPE": "records",
    "TaskOutput": "records",
    "trade_schema": "records",
    "trades_table": "records",
    "run_grid": "run",
    "SimSettings": "settings",
}

__all__ = [
    "METRIC_NAMES",
    "TRADE_DTYPE",
    "Bars",
    "SimSettings",
    "TaskOutput",
    "bars_per_year",
    "run_grid",
    "trade_schema",
    "trades_table",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"backtest.engine.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'backtest.engine' has no attribute {name!r}")

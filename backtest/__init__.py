"""bt: a command-line backtesting farm.

Heavy modules (numpy, numba, duckdb, pyarrow) are imported lazily so that ``bt --help`` is fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

ENGINE_VERSION = "2"  # 2: result files store trades compactly (results.STORED_TRADE_DTYPE)
"""Bumped whenever the engine's results could change for the same inputs; part of every task key."""


def load_run(run_id: str, root: Any = None) -> Any:
    """Return a finished run's per-task results as a pyarrow Table (``.to_pandas()`` for pandas)."""
    from backtest.report import load_run as _load_run

    return _load_run(run_id, root)

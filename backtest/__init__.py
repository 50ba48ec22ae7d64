"""bt: a command-line backtesting farm.

Heavy modules (numpy, numba, duckdb, pyarrow) are imported lazily so that ``bt --help`` is fast.
"""

from __future__ import annotations

from typing import Any

from backtest.errors import BtError
from backtest.version import ENGINE_VERSION, __version__

__all__ = ["ENGINE_VERSION", "BtError", "__version__", "load_equity", "load_run"]


def load_run(run_id: str, root: Any = None, **filters: Any) -> Any:
    """Return a finished run's per-task results as a pyarrow Table (``.to_pandas()`` for pandas),
    best first by ``sort`` (default sharpe), filtered in the catalog before anything is loaded:
    ``symbols="AAPL"`` or a list, ``params={"fast": (5, 20), "slow": [50, 100]}`` (a range, inclusive,
    or values), ``metrics={"sharpe": (1.0, None), "trades": (10, None)}``, ``status="done"``."""
    from backtest.report import load_run as _load_run

    return _load_run(run_id, root, **filters)


def load_equity(run_id: str, symbol: str, params: dict[str, Any] | None = None, root: Any = None) -> Any:
    """Return one task's equity curve (``ts``, ``equity``, ``drawdown``, ``position``) as a pyarrow
    Table, computed again and checked bit for bit against the stored result."""
    from backtest.report import load_equity as _load_equity

    return _load_equity(run_id, symbol, params, root)

"""bt: a command-line backtesting farm.

Heavy modules (numpy, numba, duckdb, pyarrow) are imported lazily so that ``bt --help`` is fast.
"""

from __future__ import annotations

from typing import Any

from backtest.version import ENGINE_VERSION, __version__

__all__ = ["ENGINE_VERSION", "__version__", "load_run"]


def load_run(run_id: str, root: Any = None) -> Any:
    """Return a finished run's per-task results as a pyarrow Table (``.to_pandas()`` for pandas)."""
    from backtest.report import load_run as _load_run

    return _load_run(run_id, root)

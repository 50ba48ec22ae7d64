"""The catalog's tables: numbered migrations, applied in order and recorded in
``schema_migrations``, and the column types rows are staged with."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

_FIRST_METRICS = (
    "total_return", "cagr", "volatility", "sharpe", "sortino", "calmar", "max_drawdown",
    "max_drawdown_duration", "exposure", "trades", "win_rate", "best_trade", "worst_trade",
    "avg_trade", "profit_factor", "expectancy", "sqn", "final_equity", "buy_and_hold_return",
)  # fmt: skip
_ADDED_METRICS = (
    "avg_drawdown", "avg_drawdown_duration", "max_drawdown_days", "omega", "kelly", "avg_win", "avg_loss",
    "max_consecutive_wins", "max_consecutive_losses", "max_trade_duration", "avg_trade_duration",
    "exposure_adjusted_return",
)  # fmt: skip
_TAIL_METRICS = ("tail_ratio",)
_BENCHMARK_METRICS = ("alpha", "beta", "information_ratio", "tracking_error", "benchmark_return")
METRICS = (*_FIRST_METRICS, *_ADDED_METRICS, *_TAIL_METRICS)
"""The output contract's metric names: the ``results`` table has one DOUBLE column each (NULL for
the names added later, in the rows of results computed before)."""

_METRIC_COLS = ", ".join(f'"{m}" DOUBLE' for m in _FIRST_METRICS)

def _jobs_out_of_runs(con: Any, root: Path) -> None:
    """Migration 2: each run's job (symbols, parameter sets, date range, data files: ~30 KB of
    JSON) moves from the ``runs`` table into a file named by its hash (``store.archive.save_job``),
    and the row keeps the hash. DuckDB rewrites a table's last row group at every checkpoint
    after an append, and all of a catalog's runs share one row group, so every new run rewrote
    every run's job: 30-100 ms at the start of each run with ~1 000 runs recorded, growing
    with every run."""
    from backtest.store.archive import save_job

    con.execute("ALTER TABLE runs ADD COLUMN job_hash VARCHAR")
    for (text,) in con.execute("SELECT DISTINCT job FROM runs WHERE job IS NOT NULL").fetchall():
        con.execute("UPDATE runs SET job_hash = ? WHERE job = ?", [save_job(root, text), text])
    con.execute("ALTER TABLE runs DROP COLUMN job")


#: Numbered schema changes, applied in order: SQL, or a function of the connection and the
#: catalog's folder (the data root).
MIGRATIONS: list[str | Callable[[Any, Path], None]] = [
    # 1: the first schema
    f"""
    CREATE TABLE runs (
        run_id VARCHAR PRIMARY KEY, created DOUBLE, strategy VARCHAR, strategy_file VARCHAR,
        code_hash VARCHAR, job VARCHAR, settings VARCHAR, executor VARCHAR, status VARCHAR,
        finished DOUBLE, tasks INTEGER, computed INTEGER, cached INTEGER, failed INTEGER,
        seconds DOUBLE, pid INTEGER, host VARCHAR, data_hashes VARCHAR
    );
    CREATE TABLE run_tasks (
        run_id VARCHAR, key VARCHAR, symbol VARCHAR, params VARCHAR, status VARCHAR,
        cached BOOLEAN, attempts INTEGER, error VARCHAR, details VARCHAR, worker VARCHAR, at_time DOUBLE
    );
    CREATE TABLE results (
        key VARCHAR, symbol VARCHAR, params VARCHAR, {_METRIC_COLS},
        n_trades INTEGER, env VARCHAR, recorded DOUBLE
    );
    CREATE TABLE logs (run_id VARCHAR, shard VARCHAR, worker VARCHAR, text VARCHAR, at_time DOUBLE);
    """,
    # 2: jobs kept in files by hash (runs.job → runs.job_hash)
    _jobs_out_of_runs,
    # 3: portfolio tasks count their orders (NULL for one-symbol tasks)
    "ALTER TABLE results ADD COLUMN orders DOUBLE",
    # 4: drawdown periods, omega, Kelly, win/loss and holding-time metrics
    ";\n".join(f'ALTER TABLE results ADD COLUMN "{m}" DOUBLE' for m in _ADDED_METRICS),
    # 5: tasks compared with a benchmark (NULL for the others)
    ";\n".join(f'ALTER TABLE results ADD COLUMN "{m}" DOUBLE' for m in _BENCHMARK_METRICS),
    # 6: the sandbox a run's strategies ran in (JSON: mode, and each host's protections)
    "ALTER TABLE runs ADD COLUMN sandbox VARCHAR",
    # 7: what a run ran, in a few bytes (JSON: symbols, parameter sets, date range), so that
    # listing runs does not read job files (a million-task grid's is ~10 MB)
    "ALTER TABLE runs ADD COLUMN scope VARCHAR",
    # 8: the tail ratio
    ";\n".join(f'ALTER TABLE results ADD COLUMN "{m}" DOUBLE' for m in _TAIL_METRICS),
]

#: metrics only some tasks have (a portfolio's ``orders``, those against a ``--benchmark``): a column
#: each, NULL where a task has none
OPTIONAL_METRICS = ("orders", *_BENCHMARK_METRICS)

RESULT_COLUMNS = {"key": "VARCHAR", "symbol": "VARCHAR", "params": "VARCHAR", **{m: "DOUBLE" for m in METRICS},
                  "n_trades": "INTEGER", "env": "VARCHAR", "recorded": "DOUBLE",
                  **{m: "DOUBLE" for m in OPTIONAL_METRICS}}
TASK_COLUMNS = {"run_id": "VARCHAR", "key": "VARCHAR", "symbol": "VARCHAR", "params": "VARCHAR", "status": "VARCHAR",
                "cached": "BOOLEAN", "attempts": "INTEGER", "error": "VARCHAR", "details": "VARCHAR",
                "worker": "VARCHAR", "at_time": "DOUBLE"}
LOG_COLUMNS = {"run_id": "VARCHAR", "shard": "VARCHAR", "worker": "VARCHAR", "text": "VARCHAR", "at_time": "DOUBLE"}

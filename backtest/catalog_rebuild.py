"""Rebuild the catalog's ``results`` table from the results store (the source of truth)."""

from __future__ import annotations

import time
from pathlib import Path

from backtest import paths
from backtest.catalog import Catalog, result_row
from backtest.errors import ResultError
from backtest.results import ResultStore, decode


def rebuild(root: Path | None = None) -> int:
    root = root or paths.root()
    store = ResultStore(root)
    rows = []
    now = time.time()
    for key in store.keys():
        try:
            rec = decode(store.read_bytes(key), where=f"result {key[:12]}")
        except ResultError:
            continue  # a damaged file is not indexed; the next run recomputes it
        header = {"key": rec.key, "symbol": rec.symbol, "params": rec.params, "n_trades": int(rec.trades.shape[0]),
                  "env": rec.env}
        rows.append(result_row(header, rec.metrics, now))
    return Catalog(root / "catalog.duckdb").rebuild_results(rows)

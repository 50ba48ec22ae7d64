"""Rebuild the catalog's ``results`` table from the results store (the source of truth)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from backtest import paths
from backtest.catalog import Catalog, result_row
from backtest.errors import ResultError
from backtest.store.results import ResultStore

#: A temporary file untouched for this long is a killed writer's leftover (a writer holds one for
#: the moment it takes to write a result file).
LEFTOVER_AGE = 600.0


@dataclass(frozen=True)
class Rebuilt:
    indexed: int  # result files indexed
    damaged: list[str]  # keys of files that could not be read: left out, the next run recomputes them
    removed: int  # leftover temporary files removed


def rebuild(root: Path | None = None) -> Rebuilt:
    root = root or paths.root()
    store = ResultStore(root)
    rows = []
    damaged = []
    now = time.time()
    for key in store.keys():
        try:
            rec = store.read(key)  # checked: checksum, and that it is this key's result
        except ResultError:
            damaged.append(key)  # set aside and not indexed: the next run that needs it recomputes it
            continue
        header = {"key": rec.key, "symbol": rec.symbol, "params": rec.params, "n_trades": int(rec.trades.shape[0]),
                  "env": rec.env}
        rows.append(result_row(header, rec.metrics, now))
    indexed = Catalog(root / "catalog.duckdb").rebuild_results(rows)
    removed = 0
    for path in store.leftovers(older_than=now - LEFTOVER_AGE):
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return Rebuilt(indexed, damaged, removed)

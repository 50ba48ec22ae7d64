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
    set_aside: Path | None = None  # a catalog file that could not be opened, moved here


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
    catalog = Catalog(root / "catalog.duckdb")
    aside = _set_aside_if_unreadable(catalog)
    indexed = catalog.rebuild_results(rows)
    removed = 0
    for path in store.leftovers(older_than=now - LEFTOVER_AGE):
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return Rebuilt(indexed, damaged, removed, aside)


def _set_aside_if_unreadable(catalog: Catalog) -> Path | None:
    """A catalog file DuckDB cannot open (damaged, or not a catalog) is renamed to
    ``catalog.duckdb.damaged-<time>`` (with its WAL), so that a new one can be made."""
    from backtest.errors import CatalogError

    if not catalog.path.exists():
        return None
    try:
        catalog.runs(1)
        return None
    except CatalogError as exc:
        if "bt catalog rebuild" not in str(exc):  # held by another program: not damaged
            raise
    aside = catalog.path.with_name(f"{catalog.path.name}.damaged-{int(time.time())}")
    catalog.path.rename(aside)
    wal = catalog.path.with_name(catalog.path.name + ".wal")
    if wal.exists():
        wal.rename(aside.with_name(aside.name + ".wal"))
    return aside

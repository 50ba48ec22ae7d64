"""``bt gc``: delete the stored results no recorded run refers to any more, and the damaged results
set aside (``ResultStore.damaged_files``); then pack the single files of a store made before packs.

A result is kept while a row of ``run_tasks`` of a recorded run names its key: results are shared
by content, so removing a run (``bt runs rm``) frees only the results no other run names. The
deletion holds the catalog (``Catalog.sweep``) and is refused while a run is going on, whose
newest results are written before the rows that name them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backtest import paths
from backtest.catalog import Catalog
from backtest.catalog.staging import Recover
from backtest.errors import CatalogError
from backtest.store.results import ResultStore


@dataclass
class Collected:
    keys: list[str]  # results no recorded run refers to: deleted, or (dry run) would be
    size: int  # their bytes
    damaged: list[Path]  # damaged files set aside: deleted, or would be
    damaged_size: int
    rows: int  # catalog ``results`` rows of keys no run refers to (dropped with the files)
    stale_rows: int  # task and log rows of runs no longer recorded (dropped)
    deleted: bool  # False for a dry run
    packed: int = 0  # single files of a store made before packs, packed (not in a dry run)
    packs: int = 0  # the packs they went into
    live: list[dict[str, Any]] = field(default_factory=list)  # runs going on (dry run only)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise CatalogError(f"cannot delete {path}: {exc.strerror or exc}; bt gc stopped there "
                           "(the catalog is as it was; run it again once the file can be deleted)") from None


def collect(alive: Callable[[int, str], bool], dry_run: bool = False, root: Path | None = None,
            recover: Recover | None = None) -> Collected:
    """Delete (or, ``dry_run``, only list) the results no recorded run refers to, and damaged files
    set aside. ``alive(pid, host)`` says whether a run's coordinator may still be at it: while one
    is, nothing is deleted (``CatalogError``)."""
    root = root or paths.root()
    catalog = Catalog(root / "catalog.duckdb", recover)
    store = ResultStore(root)
    stored = store.keys()
    damaged = store.damaged_files()
    if stored and (not catalog.path.exists() or not catalog.runs(1)):
        what = f"there is no catalog at {catalog.path}" if not catalog.path.exists() else "the catalog records no run"
        raise CatalogError(f"{what}, so no run refers to any of the {len(stored)} stored results and bt gc would "
                           "delete them all; run your jobs again first (their results are reused, so that is quick; "
                           "a rebuilt catalog has the results but not the runs)")
    if dry_run:
        found = catalog.sweep(stored, alive, None)
        return Collected(found.keys, store.sizes(found.keys), damaged,
                         sum(map(_size, damaged)), found.rows, found.stale_rows, False, live=found.live)
    sizes = {"results": 0, "damaged": 0}

    def delete(keys: list[str]) -> None:
        try:
            sizes["results"] += store.delete(keys)
        except OSError as exc:
            raise CatalogError(f"cannot delete results: {exc.strerror or exc}; bt gc stopped there (the catalog "
                               "is as it was; run it again once the files can be deleted)") from None
        for path in damaged:
            sizes["damaged"] += _size(path)
            _unlink(path)

    if not catalog.path.exists():  # nothing stored and nothing recorded: only damaged files, if any
        delete([])
        return Collected([], 0, damaged, sizes["damaged"], 0, 0, True)
    found = catalog.sweep(stored, alive, delete)
    packed, packs, _ = store.pack_files()  # (a damaged file is set aside: the next bt gc deletes it)
    return Collected(found.keys, sizes["results"], damaged, sizes["damaged"], found.rows, found.stale_rows, True,
                     packed=packed, packs=packs)

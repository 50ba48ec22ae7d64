"""``bt cache push RUN`` / ``bt cache pull RUN``: a run's results moved to or from the shared
result cache on purpose (``store.remote``), with what plans the run again.

A push uploads the packs holding the run's done results, then the run's job and strategy source
(named by their hashes) and its catalog row (``runs/<run id>.json``). A pull fetches the results
of a run this catalog knows, or of a run only the cache knows: its row, job and source are
fetched first, and its tasks planned again from them (the same keys), so that running that job
here computes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backtest.errors import BtError, CatalogError, DataError


@dataclass(frozen=True)
class Moved:
    run_id: str
    results: int  # results of the run concerned (done tasks; planned tasks for a run known remotely only)
    moved: int  # results fetched, or packs uploaded
    present: int  # results already here (pull), or packs already in the cache (push)
    missing: int  # pull: results neither here nor in the cache
    bytes: int = 0  # push: bytes uploaded
    known_here: bool = True  # pull: whether this catalog records the run


def _raise_if_broken(remote: Any) -> None:
    if remote.failure is not None:
        raise DataError(str(remote.failure))


def push_run(run_id: str, remote: Any, root: Path) -> Moved:
    """Upload the results of the run ``run_id`` (and its job, source and row)."""
    from backtest.catalog import Catalog
    from backtest.store.results import ResultStore

    if remote.read_only:
        raise BtError("the remote cache is read-only here (--remote-cache-read-only / BT_REMOTE_CACHE_READ_ONLY): "
                      "nothing can be pushed")
    catalog = Catalog(root / "catalog.duckdb")
    run = catalog.run(run_id)
    keys = catalog.done_keys(run["run_id"])
    uploaded, packs = remote.push(keys, ResultStore(root))
    _raise_if_broken(remote)
    try:
        for rel in (f"jobs/{run['job_hash']}.json", f"strategies/{run['code_hash']}.json"):
            path = root / rel
            if path.is_file():
                remote.put_file(rel, path.read_bytes())
        remote.objects.put(f"runs/{run['run_id']}.json", json.dumps(run, default=str, sort_keys=True).encode())
    except DataError as exc:
        raise DataError(str(exc)) from None
    return Moved(run["run_id"], len(keys), uploaded, packs - uploaded, 0, remote.uploaded_bytes)


def pull_run(run_id: str, remote: Any, root: Path) -> Moved:
    """Fetch the results of the run ``run_id`` that this data root lacks."""
    from backtest.catalog import Catalog
    from backtest.store.results import ResultStore

    catalog = Catalog(root / "catalog.duckdb")
    try:
        run = catalog.run(run_id)
        keys = catalog.done_keys(run["run_id"])
        here = True
    except CatalogError as exc:
        if "ambiguous" in str(exc):
            raise
        run = _remote_run(run_id, remote, root, exc)
        keys = _planned_keys(root, run)
        here = False
    store = ResultStore(root)
    have = store.existing(keys)
    missing = [k for k in keys if k not in have]
    got = remote.pull(missing, store) if missing else set()
    _raise_if_broken(remote)
    return Moved(run["run_id"], len(keys), len(got), len(have), len(missing) - len(got), known_here=here)


def _remote_run(run_id: str, remote: Any, root: Path, unknown: CatalogError) -> dict[str, Any]:
    """The row of a run the cache knows (by its id or a unique prefix), its job and source fetched
    into the data root."""
    from backtest.store.fsutil import write_once

    name = run_id.strip()
    try:
        ids = sorted(n[:-5] for n in remote.objects.names("runs") if n.endswith(".json") and n.startswith(name))
    except DataError as exc:
        raise DataError(str(exc)) from None
    exact = [i for i in ids if i == name]
    if not exact and len(ids) != 1:
        if ids:
            raise CatalogError(f'run "{name}" is ambiguous in the remote cache: it begins {", ".join(ids[:5])}; '
                               "give more of the id")
        raise CatalogError(f"{unknown}; the remote cache {remote.where} has no such run either "
                           "(bt cache push RUN puts one there)")
    found = (exact or ids)[0]
    run: dict[str, Any] = json.loads(remote.get_file(f"runs/{found}.json") or b"{}")
    for rel in (f"jobs/{run.get('job_hash')}.json", f"strategies/{run.get('code_hash')}.json"):
        data = remote.get_file(rel)
        if data is None:
            raise DataError(f"the remote cache {remote.where} lacks {rel} of run {found}; push the run again")
        write_once(root / rel, data)
    return run


def _planned_keys(root: Path, run: dict[str, Any]) -> list[str]:
    """Every task key the recorded job of ``run`` plans."""
    from backtest.plan import task_index
    from backtest.store.archive import run_windows

    windows = [(job, parts) for _, _, job, parts in run_windows(root, run)]
    return list(task_index(windows))

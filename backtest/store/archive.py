"""What a run was made of, kept by hash next to the catalog so that ``bt verify`` can rerun it:

- ``<root>/strategies/<sha256>.json``: the exact strategy source (``StrategySource``);
- ``<root>/jobs/<sha256>.json``: the job (symbols, parameter sets, warm-ups, date range and the
  data files each (symbol, warm-up) reads): ~30 KB of JSON for a grid of a few thousand
  tasks, ~10 MB for a million (the ``runs`` row keeps a few bytes of it, ``run_scope``, for listing).

Files written once by content: the same job or source run again is stored once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from backtest.errors import BtError, CatalogError
from backtest.spec import Job, PartsFor, StrategySource


def save_source(root: Path, source: StrategySource) -> None:
    """Keep the exact strategy source of a run by its hash."""
    from backtest.store.fsutil import write_once

    write_once(root / "strategies" / f"{source.hash}.json", json.dumps(source.__dict__).encode())


def load_source(root: Path, code_hash: str) -> StrategySource:
    path = root / "strategies" / f"{code_hash}.json"
    try:
        return StrategySource(**json.loads(path.read_text()))
    except FileNotFoundError as exc:
        raise BtError(f"the strategy source of this run ({code_hash[:12]}) is not stored; rerun the job") from exc


def save_job(root: Path, text: str) -> str:
    """Keep a run's job (its JSON text); its hash, which the run's catalog row keeps."""
    from backtest.hashing import sha256_hex
    from backtest.store.fsutil import write_once

    digest = sha256_hex(text)
    write_once(root / "jobs" / f"{digest}.json", text.encode())
    return digest


def load_job(root: Path, run: dict[str, Any]) -> dict[str, Any]:
    """The job of ``run`` (a ``runs`` row), as it was recorded."""
    path = root / "jobs" / f"{run.get('job_hash')}.json"
    try:
        job: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise CatalogError(f"the job of run {run['run_id']} is not stored ({path} is missing); "
                           "run the job again instead") from None
    return job


#: symbols a run's scope names (more are counted)
SCOPE_NAMES = 3


def run_scope(symbols: Sequence[str], sets: int, start_ns: int, end_ns: int) -> dict[str, Any]:
    """What a run ran, in a few bytes (the ``runs`` row keeps it as JSON): how many symbols
    (their names when there are ``SCOPE_NAMES`` or fewer), how many parameter sets, the range."""
    return {"symbols": len(symbols), **({"names": list(symbols)} if len(symbols) <= SCOPE_NAMES else {}),
            "sets": sets, "start_ns": start_ns, "end_ns": end_ns}


def scope_of(root: Path, run: dict[str, Any]) -> dict[str, Any] | None:
    """A run's scope (``run_scope``): from its ``runs`` row, or for a run recorded before rows
    kept one, from its job file; None when neither can say."""
    try:
        if run.get("scope"):
            found: dict[str, Any] = json.loads(run["scope"])
            return found
        job = load_job(root, run)
        return run_scope(list(job["symbols"]), len(job["params"]), int(job["start_ns"]), int(job["end_ns"]))
    except (BtError, OSError, ValueError, KeyError, TypeError):
        return None


def is_walk_forward(root: Path, run: dict[str, Any]) -> bool:
    """Whether ``run`` is a walk-forward run, from its job file's first bytes (the whole file can
    be large: a grid of many warm-ups lists partitions for each)."""
    path = root / "jobs" / f"{run.get('job_hash')}.json"
    try:
        with path.open("rb") as fh:
            return fh.read(17) == b'{"walk_forward": '
    except OSError:
        return False


def run_job(root: Path, run: dict[str, Any]) -> tuple[Job, PartsFor]:
    """The ``Job`` a recorded run (a ``runs`` row) ran, and the partitions each (symbol, warm-up)
    read: enough to plan its tasks again, with the same keys."""
    spec = load_job(root, run)
    source = load_source(root, run["code_hash"])
    parts = {(s, w): [(f[0], f[1]) for f in files] for s, w, files in spec["parts"]}
    job = Job(source, spec["params"], spec["warmups"], spec["symbols"], spec["start_ns"], spec["end_ns"],
              json.loads(run["settings"]), universe=spec.get("universe", ""), axes=tuple(spec.get("axes", ())))
    if "benchmark" in spec:
        symbol, bparts = spec["benchmark"]
        job = replace(job, benchmark=symbol, benchmark_parts=tuple((p, h) for p, h in bparts))
    return job, parts


def run_windows(root: Path, run: dict[str, Any]) -> list[tuple[str, int, Job, PartsFor]]:
    """Every date range a recorded run planned tasks over, as (role, fold, job, parts): the run's
    own range (role "run") for a plain run; for a walk-forward run each fold's train and test
    windows."""
    base, parts = run_job(root, run)
    spec = load_job(root, run)
    if "walk_forward" not in spec:
        return [("run", -1, base, parts)]
    out: list[tuple[str, int, Job, PartsFor]] = []
    for w in spec["walk_forward"]["windows"]:
        wparts = {(s, wu): [(f[0], f[1]) for f in files] for s, wu, files in w["parts"]}
        job = replace(base, symbols=w["symbols"], start_ns=w["start_ns"], end_ns=w["end_ns"],
                      benchmark_parts=tuple((p, h) for p, h in w.get("benchmark_parts", ())))
        out.append((w["role"], w["fold"], job, wparts))
    return out


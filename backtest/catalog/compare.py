"""``bt compare``: what differs between two recorded runs, and how their metrics moved.

A task's key hashes everything its result depends on, so tasks of the two runs with the same key
are the same result by construction (``shared``). Tasks of the same symbol and parameters whose
keys differ were computed differently (other settings, code, date range or data): those are
``matched`` pairs, and for each key metric the differences (B − A) over them are summarised.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backtest import paths
from backtest.catalog import Catalog
from backtest.errors import CatalogError

KEY_METRICS = ("total_return", "sharpe", "max_drawdown", "trades", "win_rate")
OPEN_START, OPEN_END = 0, 2**63 - 1


def _day(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.UTC).strftime("%Y-%m-%d")


def load_scope(root: Path, run: dict[str, Any]) -> dict[str, Any] | None:
    """A run's archived job (symbols, parameter sets, date range), or None when its file is gone
    or unreadable."""
    from backtest.errors import BtError
    from backtest.store.archive import load_job

    try:
        job = load_job(root, run)
        return {"symbols": list(job["symbols"]), "params": list(job["params"]),
                "start_ns": int(job["start_ns"]), "end_ns": int(job["end_ns"])}
    except (BtError, OSError, ValueError, KeyError, TypeError):
        return None


def _values(params: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Each parameter's distinct values over a grid, in order."""
    out: dict[str, dict[str, Any]] = {}
    for p in params:
        for k, v in p.items():
            out.setdefault(k, {}).setdefault(json.dumps(v, sort_keys=True), v)
    def order(v: Any) -> tuple[int, float, str]:
        return (0, float(v), "") if isinstance(v, int | float) else (1, 0.0, str(v))

    return {k: sorted(vs.values(), key=order) for k, vs in sorted(out.items())}


def _settings(run: dict[str, Any]) -> dict[str, Any]:
    try:
        found = json.loads(run.get("settings") or "{}")
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _data(run: dict[str, Any]) -> set[str]:
    try:
        return set(json.loads(run.get("data_hashes") or "[]"))
    except (ValueError, TypeError):
        return set()


def _differences(a: dict[str, Any], b: dict[str, Any], ja: dict[str, Any] | None,
                 jb: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every field of what the runs ran that differs: {"field", "a", "b"}."""
    fields: list[tuple[str, Any, Any]] = [("strategy", a["strategy"], b["strategy"]),
                                          ("code_hash", a["code_hash"], b["code_hash"])]
    if ja is not None and jb is not None:
        def when(ns: int, open_: int) -> str | None:
            return None if ns == open_ else _day(ns)

        fields += [("symbols", ja["symbols"], jb["symbols"]),
                   ("from", when(ja["start_ns"], OPEN_START), when(jb["start_ns"], OPEN_START)),
                   ("to", when(ja["end_ns"], OPEN_END), when(jb["end_ns"], OPEN_END)),
                   ("parameter_sets", len(ja["params"]), len(jb["params"]))]
        va, vb = _values(ja["params"]), _values(jb["params"])
        fields += [(f"param.{k}", va.get(k), vb.get(k)) for k in dict.fromkeys([*va, *vb])]
    elif (ja is None) != (jb is None):
        fields.append(("job", "stored" if ja is not None else "missing", "stored" if jb is not None else "missing"))
    sa, sb = _settings(a), _settings(b)
    fields += [(f"settings.{k}", sa.get(k), sb.get(k)) for k in sorted(set(sa) | set(sb))]
    out = [{"field": f, "a": x, "b": y} for f, x, y in fields if x != y]
    same_scope = ja is not None and jb is not None and all(
        ja[k] == jb[k] for k in ("symbols", "start_ns", "end_ns"))
    da, db = _data(a), _data(b)
    if same_scope and da != db:  # the same symbols and range read other bars: data re-imported
        out.append({"field": "data_partitions_not_in_other", "a": len(da - db), "b": len(db - da)})
    return out


def _summary(pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> list[dict[str, Any]]:
    out = []
    for m in KEY_METRICS:
        diffs = [y[m] - x[m] for x, y in pairs if x.get(m) is not None and y.get(m) is not None]
        out.append({"metric": m, "median_diff": statistics.median(diffs) if diffs else None,
                    "max_abs_diff": max(map(abs, diffs)) if diffs else None, "count": len(diffs)})
    return out


def compare_runs(run_a: str, run_b: str, root: Path | None = None) -> dict[str, Any]:
    """Two runs (ids, unique prefixes or ``latest``) compared: ``a`` and ``b`` (id, strategy,
    created, tasks), ``differences`` (what they ran: strategy, code, symbols, range, grid,
    settings), ``tasks`` (counts: shared keys, matched pairs, only in one) and ``metrics`` (per key
    metric over the matched pairs: median and largest absolute difference B − A, and how many
    pairs had the metric defined in both). Naming the same run twice is a ``CatalogError``."""
    root = root or paths.root()
    catalog = Catalog(root / "catalog.duckdb")
    a, b = catalog.run(run_a), catalog.run(run_b)
    if a["run_id"] == b["run_id"]:
        raise CatalogError(f'"{run_a}" and "{run_b}" both name run {a["run_id"]}; give two different runs '
                           "(bt runs lists them)")
    ta, tb = catalog.task_rows(a["run_id"]), catalog.task_rows(b["run_id"])
    differences = _differences(a, b, load_scope(root, a), load_scope(root, b))

    def ident(r: dict[str, Any]) -> tuple[str, str]:
        return r["symbol"], r["params"]

    keys_a = {r["key"] for r in ta}
    shared = len(keys_a & {r["key"] for r in tb})
    by_a = {ident(r): r for r in ta}
    by_b = {ident(r): r for r in tb}
    pairs = [(by_a[i], r) for i, r in by_b.items() if i in by_a and by_a[i]["key"] != r["key"]
             and by_a[i]["status"] == "done" and r["status"] == "done"]

    def side(run: dict[str, Any], rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {"run_id": run["run_id"], "strategy": run["strategy"], "created": run["created"],
                "status": run["status"], "tasks": len(rows)}

    return {
        "a": side(a, ta),
        "b": side(b, tb),
        "differences": differences,
        "tasks": {"shared": shared, "matched": len(pairs),
                  "only_a": len(by_a.keys() - by_b.keys()), "only_b": len(by_b.keys() - by_a.keys())},
        "metrics": _summary(pairs),
    }

"""Exports that stream: ``bt report RUN --format json|csv|parquet`` of a run of any size.

The run's rows are ranked by DuckDB (the catalog) and fetched a batch at a time; each batch is
written before the next is read, so memory stays bounded by a batch (``BATCH`` rows) whatever the
run's size. The output is the same as the in-memory export's: JSON is one array in the output
contract (``contract_json``), CSV and Parquet the flat rows (``flat_rows``).
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from backtest.catalog import METRICS, OPTIONAL_METRICS, Catalog
from backtest.errors import UsageError, did_you_mean

BATCH = 5_000


def _lower_is_better(metric: str) -> bool:
    from backtest.report import LOWER_IS_BETTER

    return metric in LOWER_IS_BETTER


Filter = tuple[str, list[Any]]  # an SQL condition over ``t`` (run_tasks) and ``r`` (results), its values


def filters(symbols: Any = None, params: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
            status: str | None = None) -> list[Filter]:
    """SQL conditions for ``load_run``'s filters: ``symbols`` (a name or names), ``params``
    (name → a value, a list of values, or a ``(low, high)`` range, inclusive, ``None`` for open),
    ``metrics`` (name → ``(low, high)``, as for params), ``status`` ("done" or "failed")."""
    out: list[Filter] = []
    if symbols is not None:
        names = [symbols] if isinstance(symbols, str) else list(symbols)
        out.append((f"upper(t.symbol) IN ({', '.join('upper(?)' for _ in names)})", names))
    for name, want in (params or {}).items():
        if not isinstance(name, str) or not name.replace("_", "").isalnum():
            raise UsageError(f"a parameter name is letters, digits and _, not {name!r}")
        out.append(_condition(f"json_extract(t.params, '$.{name}')", want, f"parameter {name}", False))
    for name, want in (metrics or {}).items():
        if name not in (*METRICS, *OPTIONAL_METRICS):
            raise UsageError(f'unknown metric "{name}".{did_you_mean(name, [*METRICS, *OPTIONAL_METRICS])}')
        out.append(_condition(f'r."{name}"', want, f"metric {name}", True))
    if status is not None:
        if status not in ("done", "failed"):
            raise UsageError(f'status is "done" or "failed", not {status!r}')
        out.append(("t.status = ?", [status]))
    return out


def _condition(expr: str, want: Any, what: str, numeric: bool) -> Filter:
    if isinstance(want, tuple):
        if len(want) != 2:
            raise UsageError(f"{what}: a range is (low, high), either end None for open")
        parts, values = [], []
        for op, end in ((">=", want[0]), ("<=", want[1])):
            if end is not None:
                parts.append(f"TRY_CAST({expr} AS DOUBLE) {op} ?")
                values.append(float(end))
        return " AND ".join(parts) or "TRUE", values
    choices = list(want) if isinstance(want, list | set) else [want]
    if numeric:
        return f"{expr} IN ({', '.join('?' for _ in choices)})", [float(c) for c in choices]
    # compared as the JSON the catalog stores: 50 and 50.0 and true are what they are
    return f"CAST({expr} AS VARCHAR) IN ({', '.join('?' for _ in choices)})", [json.dumps(c) for c in choices]


_SELECT = ", ".join(["t.key", "t.symbol", "t.params", "t.status", "t.error", "t.cached",
                     *(f'r."{m}"' for m in (*METRICS, *OPTIONAL_METRICS))])


def _record(row: tuple[Any, ...], min_trades: int | None = None) -> dict[str, Any]:
    """A task record (as ``report.task_records`` makes them, marked as ``report.mark_eligible``
    marks them) from a row of ``_SELECT``."""
    from backtest.report import _clean, mark_eligible

    key, sym, params, status, error, cached, *values = row
    rec: dict[str, Any] = {"key": key, "symbol": sym, "params": json.loads(params), "status": status,
                           "metrics": {}, "cached": bool(cached)}
    if status == "done":
        rec["metrics"] = {m: _clean(v) for m, v in zip(METRICS, values, strict=False)}
        rec["metrics"].update((m, _clean(v)) for m, v in zip(OPTIONAL_METRICS, values[len(METRICS):], strict=True)
                              if v is not None)
        mark_eligible([rec], min_trades)
    if status == "failed":
        rec["error"] = error
    return rec


def _eligible_first(min_trades: int | None) -> str:
    """An ORDER BY term that ranks tasks with fewer than ``min_trades`` trades last ("" without)."""
    return f'(coalesce(r."trades", 0) < {int(min_trades)}), ' if min_trades else ""


def _order(sort: str, min_trades: int | None = None) -> str:
    direction = "ASC" if _lower_is_better(sort) else "DESC"
    return f'{_eligible_first(min_trades)}(r."{sort}" IS NULL), r."{sort}" {direction}, t.symbol, t.params'


def catalog_view(catalog: Catalog, run_id: str, sort: str, top: int, min_trades: int | None = None) -> Any:
    """The ``report.RunView`` of a whole run, computed by the catalog: counts, the top tasks, each
    symbol's best, the quantiles and the first failures, without loading every task."""
    from backtest.report import KEY_METRICS, RunView

    base = "FROM run_tasks t LEFT JOIN results r USING (key) WHERE t.run_id = ?"
    with catalog.connect(read_only=True) as con:
        counts = {status: (n, cached) for status, n, cached in con.execute(
            f"SELECT t.status, count(*), sum(CASE WHEN t.cached THEN 1 ELSE 0 END) {base} GROUP BY t.status",
            [run_id]).fetchall()}
        first = con.execute(f"SELECT t.params {base} LIMIT 1", [run_id]).fetchone()
        names = list(json.loads(first[0])) if first else []
        vary: set[str] = set()
        if names:
            distinct = ", ".join(f"count(DISTINCT CAST(json_extract(t.params, '$.{n}') AS VARCHAR))" for n in names)
            found = con.execute(f"SELECT {distinct} {base}", [run_id]).fetchone()
            vary = {n for n, k in zip(names, found or (), strict=True) if k > 1}
        vary = vary or set(names)
        fixed = {k: v for k, v in (json.loads(first[0]).items() if first else ()) if k not in vary}
        done = f"{base} AND t.status = 'done'"
        order = _order(sort, min_trades)
        best_top = [_record(r, min_trades) for r in con.execute(
            f"SELECT {_SELECT} {done} ORDER BY {order} LIMIT ?", [run_id, top]).fetchall()]
        best = [_record(r, min_trades) for r in con.execute(
            f"SELECT {_SELECT} {done} QUALIFY row_number() OVER (PARTITION BY t.symbol ORDER BY {order}) = 1 "
            "ORDER BY t.symbol", [run_id]).fetchall()]
        quantiles = ", ".join(f'quantile_cont(r."{m}", [0, 0.25, 0.5, 0.75, 1.0])' for m in KEY_METRICS)
        qs = con.execute(f"SELECT {quantiles} {done}", [run_id]).fetchone() or [None] * len(KEY_METRICS)
        summary: list[tuple[str, list[float | None]]] = [
            (m, [float(x) for x in q] if q else [None] * 5) for m, q in zip(KEY_METRICS, qs, strict=True)]
        failures = [_record(r) for r in con.execute(
            f"SELECT {_SELECT} {base} AND t.status = 'failed' ORDER BY t.symbol, t.params LIMIT 20",
            [run_id]).fetchall()]
    n_done, n_cached = counts.get("done", (0, 0))
    shown = sum(n for n, _ in counts.values())
    return RunView(shown, n_done, int(n_cached or 0), counts.get("failed", (0, 0))[0], vary, fixed, best_top, best,
                   summary, failures)


def ranked_rows(catalog: Catalog, run_id: str, sort: str, symbol: str | None,
                where: list[Filter] | None = None, min_trades: int | None = None) -> Iterator[list[dict[str, Any]]]:
    """The run's task records in the order the reports rank them (done tasks best ``sort``
    first — those with fewer than ``min_trades`` trades after the others —, missing values last,
    ties in symbol and parameter order; then the others), in batches; only those meeting
    ``where`` (``filters``), which DuckDB applies before anything is fetched."""
    direction = "ASC" if _lower_is_better(sort) else "DESC"
    conditions = [("t.run_id = ?", [run_id]), *([("upper(t.symbol) = upper(?)", [symbol])] if symbol else []),
                  *(where or [])]
    sql = f"""SELECT {_SELECT}
              FROM run_tasks t LEFT JOIN results r USING (key)
              WHERE {" AND ".join(f"({c})" for c, _ in conditions)}
              ORDER BY t.status <> 'done', {_eligible_first(min_trades)}(t.status = 'done' AND r."{sort}" IS NULL),
                       CASE WHEN t.status = 'done' THEN r."{sort}" END {direction}, t.symbol, t.params"""
    with catalog.connect(read_only=True) as con:
        cur = con.execute(sql, [v for _, values in conditions for v in values])
        while True:
            rows = cur.fetchmany(BATCH)
            if not rows:
                return
            yield [_record(row, min_trades) for row in rows]


def export(run_id: str, fmt: str, out: Path | None, sort: str, top: int | None, symbol: str | None,
           wanted: dict[str, str], root: Path, min_trades: int | None = None) -> None:
    """Write the run's rows as ``fmt`` (json, csv or parquet) to ``out`` or stdout, a batch at a time."""
    from backtest.report import contract_row, flat_rows, matches

    if fmt == "parquet" and out is None:
        raise UsageError("--format parquet needs --out FILE")
    catalog = Catalog(root / "catalog.duckdb")
    left = top

    batches = ranked_rows(catalog, run_id, sort, symbol, min_trades=min_trades)
    head = next(batches, [])
    known = list(head[0]["params"]) if head else []
    for k in wanted:  # every task has every parameter: the first one names them
        if known and k not in known:
            raise UsageError(f'unknown parameter "{k}" in --params.{did_you_mean(k, known)}')

    def rows() -> Iterator[list[dict[str, Any]]]:
        nonlocal left
        for batch in itertools.chain([head] if head else [], batches):
            if wanted:
                batch = [r for r in batch if matches(r["params"], wanted)]
            if left is not None:
                batch, left = batch[:left], left - min(left, len(batch))
            if batch:
                yield batch
            if left == 0:
                return

    sink = out.open("wb") if out is not None else sys.stdout.buffer
    try:
        if fmt == "json":
            sink.write(b"[")
            first = True
            for batch in rows():
                text = ", ".join(json.dumps(contract_row(r), allow_nan=False) for r in batch)
                sink.write((text if first else ", " + text).encode())
                first = False
            sink.write(b"]\n" if out is None else b"]")
            return
        import pyarrow as pa

        writer: Any = None
        schema = None
        for batch in rows():
            flat = flat_rows(batch)
            if schema is None:
                schema = _schema(flat[0])
                writer = _writer(fmt, sink, schema)
            writer.write_table(pa.Table.from_pylist(flat, schema=schema))
            pa.default_memory_pool().release_unused()  # each batch's buffers go back, not into a pool
        if writer is None:  # nothing to write: the header alone (csv) or an empty file
            writer = _writer(fmt, sink, pa.schema([]))
        writer.close()
    finally:
        if out is not None:
            sink.close()
        else:
            sink.flush()


def _schema(row: dict[str, Any]) -> Any:
    import pyarrow as pa

    fields = []
    for name, value in row.items():
        if name in ("key", "symbol", "status", "error"):
            typ = pa.string()
        elif name.startswith("param_"):
            typ = (pa.bool_() if isinstance(value, bool) else pa.int64() if isinstance(value, int)
                   else pa.float64() if isinstance(value, float) else pa.string())
        else:
            typ = pa.float64()
        fields.append(pa.field(name, typ))
    return pa.schema(fields)


def _writer(fmt: str, sink: Any, schema: Any) -> Any:
    if fmt == "csv":
        import pyarrow.csv as pacsv

        return pacsv.CSVWriter(sink, schema)
    import pyarrow.parquet as pq

    return pq.ParquetWriter(sink, schema)

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
#: what DuckDB may hold while it ranks the run (it spills to a temporary file beyond it)
MEMORY_LIMIT_MB = 100


def _lower_is_better(metric: str) -> bool:
    from backtest.report import LOWER_IS_BETTER

    return metric in LOWER_IS_BETTER


def ranked_rows(catalog: Catalog, run_id: str, sort: str, symbol: str | None) -> Iterator[list[dict[str, Any]]]:
    """The run's task records in the order the reports rank them (done tasks best ``sort``
    first, missing values last, ties in symbol and parameter order; then the others), in batches."""
    from backtest.report import _clean

    metrics = (*METRICS, *OPTIONAL_METRICS)
    cols = ", ".join(f'r."{m}"' for m in metrics)
    direction = "ASC" if _lower_is_better(sort) else "DESC"
    where = "t.run_id = ?" + (" AND upper(t.symbol) = upper(?)" if symbol else "")
    sql = f"""SELECT t.key, t.symbol, t.params, t.status, t.error, t.cached, {cols}
              FROM run_tasks t LEFT JOIN results r USING (key)
              WHERE {where}
              ORDER BY t.status <> 'done', (t.status = 'done' AND r."{sort}" IS NULL),
                       CASE WHEN t.status = 'done' THEN r."{sort}" END {direction}, t.symbol, t.params"""
    with catalog.connect(read_only=True) as con:
        con.execute(f"SET memory_limit = '{MEMORY_LIMIT_MB}MB'")  # DuckDB sorts beyond it on disk
        cur = con.execute(sql, [run_id, *([symbol] if symbol else [])])
        while True:
            rows = cur.fetchmany(BATCH)
            if not rows:
                return
            out = []
            for row in rows:
                key, sym, params, status, error, cached, *values = row
                rec: dict[str, Any] = {"key": key, "symbol": sym, "params": json.loads(params), "status": status,
                                       "metrics": {}, "cached": bool(cached)}
                if status == "done":
                    rec["metrics"] = {m: _clean(v) for m, v in zip(METRICS, values, strict=False)}
                    rec["metrics"].update((m, _clean(v)) for m, v in zip(metrics[len(METRICS):], values[len(METRICS):],
                                                                          strict=True) if v is not None)
                if status == "failed":
                    rec["error"] = error
                out.append(rec)
            yield out


def export(run_id: str, fmt: str, out: Path | None, sort: str, top: int | None, symbol: str | None,
           wanted: dict[str, str], root: Path) -> None:
    """Write the run's rows as ``fmt`` (json, csv or parquet) to ``out`` or stdout, a batch at a time."""
    from backtest.report import contract_row, flat_rows, matches

    if fmt == "parquet" and out is None:
        raise UsageError("--format parquet needs --out FILE")
    catalog = Catalog(root / "catalog.duckdb")
    left = top

    batches = ranked_rows(catalog, run_id, sort, symbol)
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

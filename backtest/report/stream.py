"""Exports that stream: ``bt report RUN --format json|csv|parquet`` of a run of any size.

DuckDB (the catalog) ranks the run's rows with at most ``SORT_MEMORY`` in memory (a larger
ranking spills to temporary files) and hands them over a batch at a time; each batch is written
before the next is read, so memory stays bounded whatever the run's size. The output is the same
as the in-memory export's: JSON is one array in the output contract (``contract_json``; a done
task's object is put together from texts DuckDB makes, ``json_rows``), CSV and Parquet the flat
rows (``flat_rows``).
"""

from __future__ import annotations

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


_COLUMNS = ", ".join(["t.key", "t.symbol", "t.params", "t.status", "t.error", "t.cached",
                      *(f'r."{m}"' for m in (*METRICS, *OPTIONAL_METRICS))])
_SELECT = ", ".join(["key", "symbol", "params", "status", "error", "cached",
                     *(f'"{m}"' for m in (*METRICS, *OPTIONAL_METRICS))])  # of _COLUMNS, by name


def _record(row: tuple[Any, ...], min_trades: int | None = None) -> dict[str, Any]:
    """A task record (as ``report.task_records`` makes them, marked as ``report.mark_eligible``
    marks them) from a row of ``_SELECT`` (or ``_COLUMNS``)."""
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
    """An ORDER BY term (or a ``ROW`` field) that ranks tasks with fewer than ``min_trades`` trades
    last ("" without)."""
    return f'(coalesce(r."trades", 0) < {int(min_trades)}), ' if min_trades else ""


def _order(sort: str, min_trades: int | None = None) -> str:
    direction = "ASC" if _lower_is_better(sort) else "DESC"
    return f'{_eligible_first(min_trades)}(r."{sort}" IS NULL), r."{sort}" {direction}, t.symbol, t.params'


def _rank_value(sort: str, min_trades: int | None = None) -> str:
    """SQL for one value per task that orders a symbol's done tasks as ``_order`` ranks them (the
    least first): ``arg_min`` of it is the symbol's best. The catalog holds no NaN (a non-finite
    metric is NULL), so negating a metric reverses its order exactly."""
    value = f'r."{sort}"' if _lower_is_better(sort) else f'-r."{sort}"'
    return f'ROW({_eligible_first(min_trades)}r."{sort}" IS NULL, coalesce({value}, 0), t.params)'


def catalog_view(catalog: Catalog, run_id: str, sort: str, top: int, min_trades: int | None = None) -> Any:
    """The ``report.RunView`` of a whole run, computed by the catalog: counts, the top tasks, each
    symbol's best, the quantiles and the first failures, without loading every task."""
    from backtest.report import KEY_METRICS, RunView

    base = "FROM run_tasks t LEFT JOIN results r USING (key) WHERE t.run_id = ?"
    tasks = "FROM run_tasks t WHERE t.run_id = ?"  # what needs no metric is asked without the join
    with catalog.connect(read_only=True) as con:
        counts = {status: (n, cached) for status, n, cached in con.execute(
            f"SELECT t.status, count(*), sum(CASE WHEN t.cached THEN 1 ELSE 0 END) {tasks} GROUP BY t.status",
            [run_id]).fetchall()}
        first = con.execute(f"SELECT t.params {tasks} LIMIT 1", [run_id]).fetchone()
        names = list(json.loads(first[0])) if first else []
        vary: set[str] = set()
        if names:
            distinct = ", ".join(f"count(DISTINCT CAST(json_extract(params, '$.{n}') AS VARCHAR))" for n in names)
            found = con.execute(f"SELECT {distinct} FROM (SELECT DISTINCT t.params {tasks})", [run_id]).fetchone()
            vary = {n for n, k in zip(names, found or (), strict=True) if k > 1}
        vary = vary or set(names)
        fixed = {k: v for k, v in (json.loads(first[0]).items() if first else ()) if k not in vary}
        done = f"{base} AND t.status = 'done'"
        order = _order(sort, min_trades)
        best_top = [_record(r, min_trades) for r in con.execute(
            f"SELECT {_COLUMNS} {done} ORDER BY {order} LIMIT ?", [run_id, top]).fetchall()]
        # each symbol's best key, the least of its rows by the ranking's terms made one value
        # (ranking each symbol's rows with a window took most of a million-task run's report), then
        # those rows whole
        best_keys = [k for (k,) in con.execute(
            f"SELECT arg_min(t.key, {_rank_value(sort, min_trades)}) {done} GROUP BY t.symbol", [run_id]).fetchall()]
        best = [_record(r, min_trades) for r in con.execute(
            f"SELECT {_COLUMNS} {done} AND t.key IN (SELECT unnest(?::VARCHAR[])) ORDER BY t.symbol",
            [run_id, best_keys]).fetchall()]
        quantiles = ", ".join(f'quantile_cont(r."{m}", [0, 0.25, 0.5, 0.75, 1.0])' for m in KEY_METRICS)
        qs = con.execute(f"SELECT {quantiles} {done}", [run_id]).fetchone() or [None] * len(KEY_METRICS)
        summary: list[tuple[str, list[float | None]]] = [
            (m, [float(x) for x in q] if q else [None] * 5) for m, q in zip(KEY_METRICS, qs, strict=True)]
        failures = [_record(r) for r in con.execute(
            f"SELECT {_COLUMNS} {base} AND t.status = 'failed' ORDER BY t.symbol, t.params LIMIT 20",
            [run_id]).fetchall()]
    n_done, n_cached = counts.get("done", (0, 0))
    shown = sum(n for n, _ in counts.values())
    return RunView(shown, n_done, int(n_cached or 0), counts.get("failed", (0, 0))[0], vary, fixed, best_top, best,
                   summary, failures)


def _ranked(catalog: Catalog, run_id: str, select: str, sort: str, symbol: str | None,
            where: list[Filter] | None, min_trades: int | None) -> Iterator[list[tuple[Any, ...]]]:
    """Rows of ``select`` over the run's tasks in the order the reports rank them, in batches."""
    direction = "ASC" if _lower_is_better(sort) else "DESC"
    conditions = [("t.run_id = ?", [run_id]), *([("upper(t.symbol) = upper(?)", [symbol])] if symbol else []),
                  *(where or [])]
    # ranked first, the rows made after (DuckDB keeps the order through a projection): the sort
    # then carries numbers, not the texts ``select`` may make of them
    sql = f"""SELECT {select} FROM (
                SELECT {_COLUMNS}
                FROM run_tasks t LEFT JOIN results r USING (key)
                WHERE {" AND ".join(f"({c})" for c, _ in conditions)}
                ORDER BY t.status <> 'done', {_eligible_first(min_trades)}(t.status = 'done' AND r."{sort}" IS NULL),
                         CASE WHEN t.status = 'done' THEN r."{sort}" END {direction}, t.symbol, t.params)"""
    with catalog.connect(read_only=True, memory=SORT_MEMORY) as con:
        cur = con.execute(sql, [v for _, values in conditions for v in values])
        while True:
            rows = cur.fetchmany(BATCH)
            if not rows:
                return
            yield rows


#: The memory DuckDB may use to rank a run for an export before it spills to temporary files: a
#: million tasks' rows take ~1 GB in memory.
SORT_MEMORY = "192MB"


def ranked_rows(catalog: Catalog, run_id: str, sort: str, symbol: str | None,
                where: list[Filter] | None = None, min_trades: int | None = None) -> Iterator[list[dict[str, Any]]]:
    """The run's task records in the order the reports rank them (done tasks best ``sort``
    first — those with fewer than ``min_trades`` trades after the others —, missing values last,
    ties in symbol and parameter order; then the others), in batches; only those meeting
    ``where`` (``filters``), which DuckDB applies before anything is fetched."""
    for rows in _ranked(catalog, run_id, _SELECT, sort, symbol, where, min_trades):
        yield [_record(row, min_trades) for row in rows]


def _metric_text(names: tuple[str, ...], optional: bool) -> str:
    """SQL for a done task's metrics as the text between the braces of its JSON object: DuckDB's
    text of a DOUBLE is Python's ``repr`` of it (the shortest that reads back the same), so the
    text is what ``json.dumps`` makes of the metrics dict; missing values are null, and an
    optional metric only appears where a task has it."""
    parts = []
    for i, m in enumerate(names):
        name = ("" if i == 0 and not optional else ", ") + f'"{m}": '
        text = f'CAST("{m}" AS VARCHAR)'
        parts.append(f"""(CASE WHEN isfinite("{m}") THEN '{name}' || {text} ELSE '' END)""" if optional
                     else f"""'{name}' || CASE WHEN isfinite("{m}") THEN {text} ELSE 'null' END""")
    return " || ".join(parts)


_JSON_SELECT = ", ".join(["key", "symbol", "params", "status", "error", '"trades"',
                          f"CASE WHEN status = 'done' THEN {_metric_text(METRICS, False)} || "
                          f"{_metric_text(OPTIONAL_METRICS, True)} END"])


def json_rows(catalog: Catalog, run_id: str, sort: str, symbol: str | None,
              min_trades: int | None = None) -> Iterator[list[str]]:
    """``ranked_rows``'s records as the output contract's JSON objects (``contract_row`` through
    ``json.dumps``), in batches. A done task's object is put together from the catalog's texts:
    its parameters as recorded (``json.dumps`` of them, keys sorted) and its metrics as DuckDB
    writes them (``_metric_text``); a million tasks take seconds where building and encoding
    each record took half a minute. The others, few, are encoded from their records."""
    from backtest.report import contract_row

    names: dict[str, str] = {}  # symbols as JSON strings (a key is hex digits: as it is)

    def quoted(text: str) -> str:
        found = names.get(text)
        if found is None:
            found = names[text] = json.dumps(text)
        return found

    for rows in _ranked(catalog, run_id, _JSON_SELECT, sort, symbol, None, min_trades):
        out = []
        for key, sym, params, status, error, trades, metrics in rows:
            if status != "done":
                rec = _record((key, sym, params, status, error, False), min_trades)
                out.append(json.dumps(contract_row(rec), allow_nan=False))
                continue
            eligible = ""
            if min_trades:
                eligible = ', "eligible": true' if (trades or 0) >= min_trades else ', "eligible": false'
            out.append(f'{{"key": "{key}", "symbol": {quoted(sym)}, "params": {params}, "status": "done", '
                       f'"metrics": {{{metrics}}}{eligible}}}')
        yield out


def export(run_id: str, fmt: str, out: Path | None, sort: str, top: int | None, symbol: str | None,
           wanted: dict[str, str], root: Path, min_trades: int | None = None) -> None:
    """Write the run's rows as ``fmt`` (json, csv or parquet) to ``out`` or stdout, a batch at a time."""
    from backtest.report import contract_row, flat_rows, matches

    if fmt == "parquet" and out is None:
        raise UsageError("--format parquet needs --out FILE")
    catalog = Catalog(root / "catalog.duckdb")
    if wanted:  # every task has every parameter: the first one names them
        with catalog.connect(read_only=True) as con:
            first = con.execute("SELECT params FROM run_tasks WHERE run_id = ? LIMIT 1", [run_id]).fetchone()
        known = list(json.loads(first[0])) if first else []
        for k in wanted:
            if known and k not in known:
                raise UsageError(f'unknown parameter "{k}" in --params.{did_you_mean(k, known)}')

    def limited(batches: Iterator[list[Any]]) -> Iterator[list[Any]]:
        """The batches, those of ``--params`` only, the first ``top`` rows only."""
        left = top
        for batch in batches:
            if wanted:
                batch = [r for r in batch if matches(r["params"], wanted)]
            if left is not None:
                batch, left = batch[:left], left - min(left, len(batch))
            if batch:
                yield batch
            if left == 0:
                return

    def rows() -> Iterator[list[dict[str, Any]]]:
        return limited(ranked_rows(catalog, run_id, sort, symbol, min_trades=min_trades))

    sink = out.open("wb") if out is not None else sys.stdout.buffer
    try:
        if fmt == "json":
            sink.write(b"[")
            first = True
            texts = (limited(json_rows(catalog, run_id, sort, symbol, min_trades)) if not wanted
                     else ([json.dumps(contract_row(r), allow_nan=False) for r in batch] for batch in rows()))
            for batch_text in texts:
                text = ", ".join(batch_text)
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

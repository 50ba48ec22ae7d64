"""Trades (timestamp, price[, size]) → OHLCV bars, streamed through DuckDB.

The file is read in record batches; each batch is parsed and checked with vectorised Arrow/NumPy
code and handed to DuckDB as an Arrow stream, which aggregates it with a hash GROUP BY. Memory
stays flat however long the file is, and no Python object is made per row.

Bars are labelled by their start, on a UTC grid (``ts // step * step``); an interval with no trade
makes no bar. open/close are the first/last trade by time, ties broken by file order. Volume is the
sum of sizes (NaN when the file has no size column). A file of bars (open, high, low, close) is
resampled to the coarser frequency the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from backtest.data.freq import format_freq, parse_freq
from backtest.data.partition import Columns
from backtest.data.sources import Layout, Source
from backtest.data.timestamps import parse_timestamps
from backtest.data.validate import Frame, Options, check_symbol
from backtest.errors import BtError, DataError, ValidationError


class _Unsorted(Exception):
    """Stop the fast pass: trades are not in time order, so file order cannot break ties."""


def frames_from_ticks(src: Source, lay: Layout, opts: Options, default_symbol: str | None) -> list[Frame]:
    step = parse_freq(opts.bars or "")
    try:
        return _aggregate(src, lay, opts, default_symbol, step, sorted_input=True)
    except _Unsorted:
        return _aggregate(src, lay, opts, default_symbol, step, sorted_input=False)


def _aggregate(src: Source, lay: Layout, opts: Options, default_symbol: str | None, step: int,
               sorted_input: bool) -> list[Frame]:
    import duckdb
    import pyarrow as pa

    trades = "price" in lay.fields
    by_symbol = "symbol" in lay.fields
    state: dict[str, Any] = {"offset": 0, "last": None, "rows": 0, "error": None,
                             "warnings": [], "dropped": 0}
    names = (["sym"] if by_symbol else []) + ["bucket", "ts", "key"] + (
        ["price", "size"] if trades else ["open", "high", "low", "close", "volume"])
    schema = pa.schema([pa.field(n, pa.string() if n == "sym" else pa.int64() if n in ("bucket", "ts", "key")
                                 else pa.float64()) for n in names])

    def batches() -> Iterator[Any]:
        try:
            for table in src.batches(lay):
                batch = _prepare(table, src, lay, opts, step, sorted_input, state)
                if batch is not None:
                    yield pa.record_batch([batch[n] for n in names], schema=schema)
        except BaseException as exc:  # DuckDB wraps what we raise; keep ours to re-raise it
            state["error"] = exc
            raise

    # In a sorted file the row number alone orders trades; otherwise order by (ts, row): 3x slower.
    key = "key" if sorted_input else "(ts, key)"
    if trades:
        agg = (f"arg_min(price, {key}) AS open, max(price) AS high, min(price) AS low, "
               f"arg_max(price, {key}) AS close, sum(size) AS volume")
    else:
        agg = (f"arg_min(open, {key}) AS open, max(high) AS high, min(low) AS low, "
               f"arg_max(close, {key}) AS close, sum(volume) AS volume")
    group = "sym, bucket" if by_symbol else "bucket"
    con = duckdb.connect(config={"threads": 2})
    try:
        con.execute("SET enable_progress_bar = false")  # it would print on our stdout
        con.register("ticks", pa.RecordBatchReader.from_batches(schema, batches()))
        result = con.sql(f"SELECT {group}, {agg}, count(*) AS n FROM ticks GROUP BY {group} ORDER BY {group}"
                         ).to_arrow_table()
    except Exception as exc:
        if isinstance(state["error"], (BtError, _Unsorted)):
            raise state["error"] from None
        raise DataError(f"{src.label}: aggregating trades failed: {exc}") from exc
    finally:
        con.close()
    if state["rows"] == 0 or result.num_rows == 0:
        raise ValidationError(f"{src.label}: no data rows, only a header; export the file again with its data")
    return _frames(result, src, opts, default_symbol, by_symbol, trades, step, state)


def _prepare(table: Any, src: Source, lay: Layout, opts: Options, step: int, sorted_input: bool,
             state: dict[str, Any]) -> dict[str, Any] | None:
    """Parse and check one batch; returns the columns handed to DuckDB."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    offset = state["offset"]
    state["offset"] += n
    index = np.arange(offset, offset + n, dtype=np.int64)
    cols = table.column_names
    if "symbol" in cols and opts.symbol:
        mask = pc.fill_null(pc.equal(pc.utf8_upper(pc.utf8_trim_whitespace(table.column("symbol"))),
                                     opts.symbol.upper()), False).to_numpy(zero_copy_only=False)
        table, index = table.filter(mask), index[mask]
    ts_col = table.column("ts") if "ts" in cols else pc.binary_join_element_wise(
        table.column("date").cast(pa.string()), table.column("time").cast(pa.string()), " ")
    nums = {c: np.asarray(table.column(c).to_numpy(), dtype=np.float64)
            for c in ("price", "size", "open", "high", "low", "close", "volume") if c in cols}
    missing = pc.is_null(ts_col).to_numpy(zero_copy_only=False)
    for v in nums.values():
        missing = missing | np.isnan(v)
    if "symbol" in cols:
        missing |= pc.is_null(table.column("symbol")).to_numpy(zero_copy_only=False)
    if missing.any():
        if not opts.dropna:
            raise ValidationError(f"{src.where(int(index[np.argmax(missing)]))}: missing value; fill it in or "
                                  f"remove the row, or pass --dropna to skip such rows")
        state["dropped"] += int(missing.sum())
        keep = ~missing
        table, index, ts_col = table.filter(keep), index[keep], ts_col.filter(keep)
        nums = {c: v[keep] for c, v in nums.items()}
    if len(index) == 0:
        return None

    def where(i: int) -> str:
        return src.where(int(index[i]))

    ts, warns = parse_timestamps(ts_col, opts.tz, where, opts.date_format)
    state["warnings"] += [w for w in warns if w not in state["warnings"]]
    for c, v in nums.items():
        bad = ~(v >= 0) | np.isinf(v) if c in ("size", "volume") else ~(v > 0) | np.isinf(v)
        if bad.any():
            i = int(np.argmax(bad))
            rule = "zero or more" if c in ("size", "volume") else "a positive finite number"
            raise ValidationError(f"{where(i)}: {c} is {v[i]:.10g}; it must be {rule}: fix or remove the row")
    if sorted_input:
        last = state["last"]
        if (last is not None and ts[0] < last) or np.any(ts[1:] < ts[:-1]):
            raise _Unsorted()
        state["last"] = int(ts[-1])
    state["rows"] += len(index)
    out: dict[str, Any] = {"bucket": (ts // step) * step, "ts": ts, "key": index, **nums}
    if "price" in nums and "size" not in nums:
        out["size"] = np.full(len(index), np.nan)
    if "open" in nums and "volume" not in nums:
        out["volume"] = np.full(len(index), np.nan)
    if "symbol" in cols:
        out["sym"] = pc.utf8_upper(pc.utf8_trim_whitespace(table.column("symbol").cast(pa.string()))).combine_chunks()
    return out


def _frames(result: Any, src: Source, opts: Options, default_symbol: str | None, by_symbol: bool,
            trades: bool, step: int, state: dict[str, Any]) -> list[Frame]:
    cols = {c: result.column(c).to_numpy(zero_copy_only=False) for c in result.column_names}
    warnings = list(state["warnings"])
    if state["dropped"]:
        warnings.append(f"dropped {state['dropped']} rows with missing values")
    what = "trades" if trades else "bars"
    warnings.append(f"aggregated {state['rows']} {what} into {result.num_rows} bars of {format_freq(step)}")
    if by_symbol:
        syms = cols["sym"].astype(str)
        groups = [(s, np.flatnonzero(syms == s)) for s in dict.fromkeys(syms.tolist())]
    else:
        groups = [(opts.symbol or default_symbol or "", np.arange(result.num_rows))]
    frames = []
    for sym, idx in groups:
        c = Columns(np.asarray(cols["bucket"][idx], dtype=np.int64),
                    *(np.asarray(cols[k][idx], dtype=np.float64) for k in ("open", "high", "low", "close", "volume")))
        frames.append(Frame(check_symbol(sym, src.label), c, src.label, src.unit, None, list(warnings)))
    return frames

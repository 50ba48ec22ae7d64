"""Checks and clean-ups between a parsed file and the store, vectorised over whole columns.

Each check names the first offending line (and how many more there are), what is wrong and how to
fix it; the options that relax a check (``--dropna``, ``--dedupe``, ``--repair``) turn it into a
warning that says how many rows it touched. Unsorted input is sorted with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backtest.data.freq import fmt_ts
from backtest.data.partition import Columns
from backtest.data.timestamps import parse_timestamps
from backtest.errors import ValidationError

SYMBOL_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_^="


#: The largest price accepted: far above any traded instrument's (a few 1e5 per share), far below
#: where an account's arithmetic (size × price × bars) loses its precision or overflows.
MAX_PRICE = 1e12


@dataclass
class Options:
    """How to read files; the CLI flags of ``bt data import``."""

    symbol: str | None = None
    tz: str | None = None
    date_format: str | None = None  # strptime codes of string timestamps (default: detected)
    adjust: bool = False
    bars: str | None = None
    dedupe: bool = False
    dropna: bool = False
    replace: bool = False
    repair: bool = False


@dataclass(eq=False)
class Frame:
    """One symbol's validated bars from one source, sorted by unique ts."""

    symbol: str
    cols: Columns
    label: str
    unit: str = "line"
    lines: np.ndarray | None = None  # source line (or row) of each bar; None for aggregated bars
    warnings: list[str] = field(default_factory=list)

    def where(self, i: int) -> str:
        if self.lines is None:
            return f"{self.label}: bar {fmt_ts(int(self.cols.ts[i]))}"
        return f"{self.label}: {self.unit} {int(self.lines[i])}"


def check_symbol(symbol: str, label: str = "") -> str:
    """Upper-cased symbol; ValidationError if it cannot be a directory name."""
    sym = symbol.strip().upper()
    if not sym or len(sym) > 32 or sym[0] in ".-" or any(ch not in SYMBOL_CHARS for ch in sym):
        where = f"{label}: " if label else ""
        raise ValidationError(f'{where}symbol "{symbol}" is not usable: use 1-32 letters, digits and . - _ ^ = '
                              f"(e.g. AAPL, BRK.B, BTC-USD); pass --symbol to choose one")
    return sym


def _more(mask: np.ndarray, unit: str) -> str:
    extra = int(mask.sum()) - 1
    return f" (and {extra} more {unit}{'s' if extra > 1 else ''} like it)" if extra > 0 else ""


def _num(x: float) -> str:
    return f"{x:.10g}"


class _Rows:
    """Parallel arrays of one source being checked; ``keep`` drops rows from all of them."""

    def __init__(self, label: str, unit: str, lines: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
        self.label, self.unit, self.lines, self.arrays = label, unit, lines, arrays

    def where(self, i: int) -> str:
        return f"{self.label}: {self.unit} {int(self.lines[i])}"

    def keep(self, mask: np.ndarray) -> None:
        self.lines = self.lines[mask]
        self.arrays = {k: v[mask] for k, v in self.arrays.items()}


def frames_from_table(table: Any, label: str, unit: str, first: int, opts: Options,
                      default_symbol: str | None) -> list[Frame]:
    """A parsed file (canonical column names) → validated frames, one per symbol."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if table.num_rows == 0:
        raise ValidationError(f"{label}: no data rows, only a header; export the file again with its data")
    lines = first + np.arange(table.num_rows, dtype=np.int64)
    warnings: list[str] = []
    if "symbol" in table.column_names:
        syms = pc.utf8_upper(pc.utf8_trim_whitespace(table.column("symbol").cast(pa.string())))
        if opts.symbol:
            mask = pc.fill_null(pc.equal(syms, opts.symbol.upper()), False).to_numpy(zero_copy_only=False)
            if not mask.any():
                raise ValidationError(f'{label}: no rows with symbol "{opts.symbol.upper()}" in its symbol column')
            table, lines, syms = table.filter(mask), lines[mask], syms.filter(mask)
        nulls = np.flatnonzero(pc.is_null(syms).to_numpy(zero_copy_only=False))
        if len(nulls):
            raise ValidationError(f"{label}: {unit} {lines[nulls[0]]}: empty symbol; fill in the symbol column")
    else:
        syms = None
    ts_col = table.column("ts") if "ts" in table.column_names else pc.binary_join_element_wise(
        table.column("date").cast(pa.string()), table.column("time").cast(pa.string()), " ")
    null_ts = pc.is_null(ts_col).to_numpy(zero_copy_only=False)
    if null_ts.any():
        if not opts.dropna:
            raise ValidationError(f"{label}: {unit} {lines[np.argmax(null_ts)]}: empty timestamp{_more(null_ts, 'row')}; "
                                  f"fill it in or remove the row, or pass --dropna to skip such rows")
        warnings.append(f"dropped {int(null_ts.sum())} rows without a timestamp (first at {unit} "
                        f"{lines[np.argmax(null_ts)]})")
        table, lines = table.filter(~null_ts), lines[~null_ts]
        syms = syms.filter(~null_ts) if syms is not None else None
        ts_col = ts_col.filter(~null_ts)
        if table.num_rows == 0:
            raise ValidationError(f"{label}: no rows left after dropping rows without a timestamp")

    def where(i: int) -> str:
        return f"{label}: {unit} {int(lines[i])}"

    ts, ts_warnings = parse_timestamps(ts_col, opts.tz, where, opts.date_format)
    warnings += ts_warnings
    arrays: dict[str, np.ndarray] = {"ts": ts}
    for c in ("open", "high", "low", "close", "volume", "adjclose"):
        if c in table.column_names and (c != "adjclose" or opts.adjust):
            arrays[c] = np.asarray(table.column(c).to_numpy(), dtype=np.float64)
    if syms is not None:
        codes = pc.dictionary_encode(syms).combine_chunks()
        arrays["code"] = np.asarray(codes.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        names = [check_symbol(s, label) for s in codes.dictionary.to_pylist()]
    else:
        names = [check_symbol(opts.symbol or default_symbol or "", label)]
    rows = _Rows(label, unit, lines, arrays)
    check_values(rows, opts, warnings)
    out = []
    for code, name in enumerate(names):
        if syms is not None:
            pick = rows.arrays["code"] == code
            lines_k, arr_k = rows.lines[pick], {k: v[pick] for k, v in rows.arrays.items()}
        else:
            lines_k, arr_k = rows.lines, rows.arrays
        if len(lines_k) == 0:
            continue
        frame = Frame(name, _columns(arr_k), label, unit, lines_k, list(warnings))
        out.append(order_and_dedupe(frame, opts))
    return out


def _columns(a: dict[str, np.ndarray]) -> Columns:
    vol = a.get("volume")
    if vol is None:
        vol = np.full(len(a["ts"]), np.nan)
    return Columns(a["ts"], a["open"], a["high"], a["low"], a["close"], vol)


def check_values(rows: _Rows, opts: Options, warnings: list[str]) -> None:
    """Missing values, non-positive prices, negative volume, high/low that do not bracket open/close."""
    a = rows.arrays
    priced = [c for c in ("open", "high", "low", "close", "adjclose") if c in a]
    nan = np.zeros(len(rows.lines), dtype=bool)
    for c in [*priced, "volume"]:
        if c in a:
            nan |= np.isnan(a[c])
    if nan.any():
        i = int(np.argmax(nan))
        col = next(c for c in [*priced, "volume"] if c in a and np.isnan(a[c][i]))
        if not opts.dropna:
            raise ValidationError(f"{rows.where(i)}: missing value in {_name(col)}{_more(nan, 'row')}; "
                                  f"fill it in or remove the row, or pass --dropna to skip such rows")
        warnings.append(f"dropped {int(nan.sum())} rows with missing values (first at {rows.unit} {rows.lines[i]})")
        rows.keep(~nan)
        a = rows.arrays
        if len(rows.lines) == 0:
            raise ValidationError(f"{rows.label}: no rows left after dropping rows with missing values")
    for c in priced:
        bad = ~(a[c] > 0) | np.isinf(a[c])
        if bad.any():
            i = int(np.argmax(bad))
            raise ValidationError(f"{rows.where(i)}: {_name(c)} is {_num(a[c][i])}{_more(bad, 'row')}; prices must be "
                                  f"positive finite numbers: fix or remove the row")
        huge = a[c] > MAX_PRICE
        if huge.any():
            i = int(np.argmax(huge))
            raise ValidationError(f"{rows.where(i)}: {_name(c)} is {_num(a[c][i])}{_more(huge, 'row')}, more than "
                                  f"{MAX_PRICE:.0e}: a price that large is a data error (and would overflow a "
                                  "backtest's arithmetic); fix or remove the row")
    if "volume" in a:
        bad = ~(a["volume"] >= 0) | np.isinf(a["volume"])
        if bad.any():
            i = int(np.argmax(bad))
            raise ValidationError(f"{rows.where(i)}: volume is {_num(a['volume'][i])}{_more(bad, 'row')}; volume "
                                  f"must be zero or more: fix or remove the row")
    if opts.adjust:
        factor = a["adjclose"] / a["close"]
        for c in ("open", "high", "low", "close"):  # one factor for all four keeps high >= close exact
            a[c] = a[c] * factor
        del a["adjclose"]
    o, h, lo, cl = a["open"], a["high"], a["low"], a["close"]
    bad_hl, bad_o, bad_c = h < lo, (o > h) | (o < lo), (cl > h) | (cl < lo)
    bad = bad_hl | bad_o | bad_c
    if bad.any():
        i = int(np.argmax(bad))
        if not opts.repair:
            what = (f"high {_num(h[i])} is below low {_num(lo[i])}" if bad_hl[i] else
                    f"{'open' if bad_o[i] else 'close'} {_num(o[i] if bad_o[i] else cl[i])} is outside "
                    f"[low {_num(lo[i])}, high {_num(h[i])}]")
            raise ValidationError(f"{rows.where(i)}: {what}{_more(bad, 'row')}; fix the row, or pass --repair "
                                  f"to widen high and low to contain open and close")
        a["high"] = np.maximum(np.maximum(o, h), np.maximum(lo, cl))
        a["low"] = np.minimum(np.minimum(o, h), np.minimum(lo, cl))
        warnings.append(f"repaired high/low of {int(bad.sum())} rows to contain open and close "
                        f"(first at {rows.unit} {rows.lines[i]})")


def _name(col: str) -> str:
    return "adj close" if col == "adjclose" else col


def order_and_dedupe(frame: Frame, opts: Options) -> Frame:
    """Sort by time (stable, so "last" means last in the file) and handle duplicate timestamps."""
    ts = frame.cols.ts
    if len(ts) > 1 and not np.all(ts[1:] >= ts[:-1]):
        order = np.argsort(ts, kind="stable")
        frame.cols = frame.cols.take(order)
        frame.lines = frame.lines[order] if frame.lines is not None else None
        frame.warnings.append(f"{frame.symbol}: rows were not in time order; sorted them")
        ts = frame.cols.ts
    dup = ts[1:] == ts[:-1]
    if dup.any():
        i = int(np.argmax(dup)) + 1
        if not opts.dedupe:
            first = f" (same as {frame.unit} {int(frame.lines[i - 1])})" if frame.lines is not None else ""
            raise ValidationError(f"{frame.where(i)}: duplicate timestamp {fmt_ts(int(ts[i]))}{first}"
                                  f"{_more(dup, 'row')}; remove one, or pass --dedupe to keep the last")
        keep = np.append(~dup, True)
        frame.cols = frame.cols.take(keep)
        frame.lines = frame.lines[keep] if frame.lines is not None else None
        frame.warnings.append(f"{frame.symbol}: dropped {int(dup.sum())} rows with a duplicate timestamp "
                              f"(kept the last of each)")
    return frame


def frame_from_arrays(symbol: str, ts: Any, open: Any, high: Any, low: Any, close: Any, volume: Any,
                      opts: Options) -> Frame:
    """The programmatic import: the same checks, with rows numbered from 1."""
    symbol = check_symbol(symbol)
    n = len(ts)
    if n == 0:
        raise ValidationError(f"{symbol}: no bars given")
    ts = np.asarray(ts)
    if ts.dtype.kind == "M":  # datetime64 of any unit
        ts = ts.astype("datetime64[ns]")
    elif ts.dtype.kind not in "iu":
        raise ValidationError(f"{symbol}: ts must be int64 nanoseconds since the epoch (UTC) or datetime64, "
                              f"not {ts.dtype}")
    arrays: dict[str, np.ndarray] = {"ts": ts.astype(np.int64)}
    for name, value in (("open", open), ("high", high), ("low", low), ("close", close), ("volume", volume)):
        if value is None:
            continue
        arr = np.asarray(value, dtype=np.float64)
        if arr.shape != (n,):
            raise ValidationError(f"{symbol}: {name} has shape {arr.shape}, expected ({n},) like ts")
        arrays[name] = arr
    label = f"{symbol} (arrays)"
    for name in ("open", "high", "low", "close"):
        if name not in arrays:
            raise ValidationError(f"{label}: {name} is required")
    rows = _Rows(label, "row", np.arange(1, n + 1, dtype=np.int64), arrays)
    warnings: list[str] = []
    check_values(rows, opts, warnings)
    frame = Frame(symbol, _columns(rows.arrays), label, "row", rows.lines, warnings)
    return order_and_dedupe(frame, opts)

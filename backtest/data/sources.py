"""Vendor files (CSV, gzip CSV, Parquet) → Arrow columns with canonical names.

Columns are found by header name, case-, space- and punctuation-insensitive, in any order.
Nothing here validates values beyond "is it a number"; see ``validate``.
"""

from __future__ import annotations

import csv
import gzip
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backtest.errors import DataError, ValidationError

SUFFIXES = (".csv", ".csv.gz", ".txt", ".txt.gz", ".tsv", ".tsv.gz", ".gz", ".parquet", ".pq")

_TS = ("timestamp", "datetime", "date", "time", "ts", "dt", "timestamputc", "datetimeutc", "dateutc", "timeutc")
_BARS = {"open": ("open", "o", "openprice"), "high": ("high", "h", "highprice"),
         "low": ("low", "l", "lowprice"), "close": ("close", "c", "closeprice"),
         "adjclose": ("adjclose", "adjustedclose", "adjclosing", "adjustedclosing"),
         "volume": ("volume", "vol", "v")}
_TICKS = {"price": ("price", "tradeprice", "last", "lastprice"),
          "size": ("size", "qty", "quantity", "amount", "tradesize", "volume", "vol")}
_SYMBOL = ("symbol", "ticker", "sym", "instrument")
WHOLE_BLOCK = 4 << 20  # bytes of CSV per parallel parse task when reading a whole file (less CPU than 1 MB)
STREAM_BLOCK = 2 << 20  # bytes of CSV per record batch when streaming; DuckDB buffers ~40 of them
NUMERIC = ("open", "high", "low", "close", "adjclose", "volume", "price", "size")
_LOOKS_LIKE_DATA = re.compile(r"^[\d.:/\- +T]+$")


def norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


@dataclass
class Layout:
    """Which header column is which: canonical name → index in the header."""

    names: list[str]
    fields: dict[str, int] = field(default_factory=dict)

    @property
    def ts(self) -> list[str]:
        return [k for k in ("ts", "date", "time") if k in self.fields]

    def has(self, *names: str) -> bool:
        return all(n in self.fields for n in names)


def find_layout(names: list[str], label: str, *, ticks: bool, adjust: bool) -> Layout:
    """Map a header to canonical columns; ValidationError naming what is missing and what was found."""
    found = ", ".join(n for n in names) or "nothing"
    normed = [norm(n) for n in names]
    lay = Layout(list(names))
    wanted = {**_BARS, **(_TICKS if ticks else {}), "symbol": _SYMBOL}
    for canon, aliases in wanted.items():
        hits = [i for i, n in enumerate(normed) if n in aliases and i not in lay.fields.values()]
        if len(hits) > 1:
            both = " and ".join(f'"{names[i]}"' for i in hits[:2])
            raise ValidationError(f"{label}: columns {both} both mean {canon}; remove or rename one")
        if hits:
            lay.fields[canon] = hits[0]
    if ticks and "size" not in lay.fields and "price" in lay.fields and "volume" in lay.fields:
        lay.fields["size"] = lay.fields.pop("volume")
    ts_hits = {n: i for i, n in enumerate(normed) if n in _TS}
    if "date" in ts_hits and "time" in ts_hits and not ({"timestamp", "datetime"} & ts_hits.keys()):
        lay.fields["date"], lay.fields["time"] = ts_hits["date"], ts_hits["time"]
    elif ts_hits:
        lay.fields["ts"] = ts_hits[min(ts_hits, key=_TS.index)]
    elif ticks:
        raise _missing(label, ["timestamp"], names, found, "name the columns timestamp, price[, size]")
    else:
        raise _missing(label, ["date"], names, found)
    if ticks and not lay.has("price"):
        if lay.has("open", "high", "low", "close"):
            return lay  # bars resampled to a coarser frequency
        raise _missing(label, ["price"], names, found, "name the columns timestamp, price[, size]")
    if not ticks:
        missing = [c for c in ("open", "high", "low", "close") if c not in lay.fields]
        if missing == ["open", "high", "low", "close"] and "price" in normed:
            raise ValidationError(f"{label}: this looks like a file of trades (a price column, no open/high/low/"
                                  f"close); pass --bars 1min (or another frequency) to aggregate it into bars")
        if missing:
            raise _missing(label, missing, names, found)
    if adjust and "adjclose" not in lay.fields:
        raise ValidationError(f'{label}: --adjust needs an "adj close" column (found: {found}); '
                              f"import without --adjust")
    return lay


def _missing(label: str, cols: list[str], names: list[str], found: str, how: str = "") -> ValidationError:
    what = ", ".join(f'"{c}"' for c in cols)
    if names and all(_LOOKS_LIKE_DATA.match(n.strip() or "x") for n in names):
        return ValidationError(f"{label}: the first line looks like data, not a header (found: {found}); "
                               f"add a header line such as date,open,high,low,close,volume")
    how = how or "name the columns date, open, high, low, close[, volume] (any order and case)"
    return ValidationError(f"{label}: no {what} column{'s' if len(cols) > 1 else ''} (found: {found}); {how}")


class Source:
    """One input file. ``unit`` and ``first`` turn a row index into what a person can find."""

    def __init__(self, path: Path, label: str | None = None) -> None:
        self.path = path
        self.label = label or str(path)
        self.kind = _sniff(path, self.label)
        self.unit = "row" if self.kind == "parquet" else "line"
        self.first = 1 if self.kind == "parquet" else 2
        self.delimiter = ","
        self._first_row = b""
        self.names = self._header()

    def where(self, i: int) -> str:
        return f"{self.label}: {self.unit} {self.first + i}"

    def _header(self) -> list[str]:
        if self.kind == "parquet":
            return list(self._parquet().schema_arrow.names)
        opener = gzip.open if self.kind == "gzip" else open
        try:
            with opener(self.path, "rb") as f:
                head = f.readline(1 << 20)
                self._first_row = f.readline(1 << 20)
                if not head.strip():
                    rest = f.read(1 << 20).strip()
                    raise ValidationError(f"{self.label}: " + (
                        "line 1 is blank; the first line must be the header, e.g. date,open,high,low,close"
                        if rest else "the file is empty; export it again with a header line and data rows"))
        except (OSError, EOFError) as exc:
            raise ValidationError(f"{self.label}: cannot read the file ({exc}); is it a valid CSV"
                                  f"{' (gzip)' if self.kind == 'gzip' else ''} file?") from exc
        try:
            text = head.decode("utf-8-sig").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise ValidationError(f"{self.label}: line 1 is not UTF-8 text; save the file as UTF-8 CSV") from exc
        counts = {d: text.count(d) for d in (",", ";", "\t", "|")}
        self.delimiter = max(counts, key=lambda d: counts[d]) if any(counts.values()) else ","
        return [n.strip() for n in next(csv.reader([text], delimiter=self.delimiter), [])]

    def _parquet(self) -> Any:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(str(self.path))
        except (OSError, pa.ArrowException) as exc:
            raise ValidationError(f"{self.label}: not a readable Parquet file ({exc})") from exc

    def _csv_options(self, lay: Layout, strings: bool, block_size: int | None = None,
                     ts_type: Any = None) -> dict[str, Any]:
        import pyarrow as pa
        import pyarrow.csv as pcsv

        names = [f"_{i}" for i in range(len(self.names))]
        for canon, i in lay.fields.items():
            names[i] = canon
        types = {c: (pa.float64() if c in NUMERIC and not strings else pa.string()) for c in lay.fields}
        if ts_type is not None:
            types["ts"] = ts_type
        # Streaming reads one block at a time: with threads, Arrow reads ahead without bound.
        read = pcsv.ReadOptions(column_names=names, skip_rows=1, use_threads=block_size is None,
                                block_size=block_size or WHOLE_BLOCK)
        return {"read_options": read,
                "parse_options": pcsv.ParseOptions(delimiter=self.delimiter),
                "convert_options": pcsv.ConvertOptions(include_columns=list(lay.fields), column_types=types,
                                                       strings_can_be_null=True, quoted_strings_can_be_null=True)}

    def _input(self) -> Any:
        import pyarrow as pa

        if self.kind == "gzip":
            return pa.input_stream(str(self.path), compression="gzip")
        return str(self.path)

    def read(self, lay: Layout) -> Any:
        """The whole file as a Table with canonical column names; numbers as float64."""
        import pyarrow as pa
        import pyarrow.csv as pcsv

        if self.kind == "parquet":
            return self._numeric(self._rename(self._parquet().read(columns=self._raw(lay)), lay), 0)
        ts_type = self._iso_type(lay)
        if ts_type is not None:  # ISO timestamps: parsed by the (multi-threaded) CSV reader itself
            try:
                return pcsv.read_csv(self._input(), **self._csv_options(lay, strings=False, ts_type=ts_type))
            except pa.ArrowInvalid:
                pass  # some row is not like the first: the slower path below names it
        try:
            return pcsv.read_csv(self._input(), **self._csv_options(lay, strings=False))
        except pa.ArrowInvalid as exc:
            self._diagnose(lay, exc)
            raise  # pragma: no cover - _diagnose always raises

    def _iso_type(self, lay: Layout) -> Any:
        """The Arrow type to parse the timestamp column as, when its first value is ISO; else None."""
        import pyarrow as pa

        from backtest.data.timestamps import ISO

        if "ts" not in lay.fields or not self._first_row:
            return None
        try:
            text = self._first_row.decode("utf-8").rstrip("\r\n")
            value = next(csv.reader([text], delimiter=self.delimiter))[lay.fields["ts"]].strip()
        except (UnicodeDecodeError, IndexError, StopIteration, csv.Error):
            return None
        m = ISO.match(value)
        if not m:
            return None
        if m.group("tz"):
            return pa.timestamp("ns", tz="UTC")
        return pa.timestamp("ns") if m.group("time") else pa.date32()

    def batches(self, lay: Layout) -> Iterator[Any]:
        """The file in record batches (streaming: memory stays flat for files of any size)."""
        import pyarrow as pa
        import pyarrow.csv as pcsv

        offset = 0
        if self.kind == "parquet":
            for batch in self._parquet().iter_batches(batch_size=STREAM_BLOCK // 32, columns=self._raw(lay)):
                batch = self._numeric(self._rename(pa.Table.from_batches([batch]), lay), offset)
                offset += batch.num_rows
                yield batch
            return
        try:
            reader = pcsv.open_csv(self._input(), **self._csv_options(lay, strings=False, block_size=STREAM_BLOCK))
            for batch in reader:
                yield pa.Table.from_batches([batch])
        except pa.ArrowInvalid as exc:
            self._diagnose(lay, exc)

    def _raw(self, lay: Layout) -> list[str]:
        return [self.names[i] for i in lay.fields.values()]

    def _rename(self, table: Any, lay: Layout) -> Any:
        return table.rename_columns(list(lay.fields))

    def _numeric(self, table: Any, offset: int) -> Any:
        """Cast numeric columns of a Parquet table to float64, naming the first row that is not a number."""
        import pyarrow as pa

        for canon in table.column_names:
            col = table.column(canon)
            if canon not in NUMERIC or col.type == pa.float64():
                continue
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                col = _trim(col)
            try:
                col = col.cast(pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                i = _first_bad_number(col.combine_chunks())
                if i is None:
                    raise ValidationError(f"{self.label}: column {canon} has type {col.type}, not numbers") from exc
                raise _not_a_number(self.where(offset + i), canon, col[i].as_py()) from exc
            table = table.set_column(table.column_names.index(canon), canon, col)
        return table

    def _diagnose(self, lay: Layout, exc: Exception) -> None:
        """The fast typed read failed: find the line and column that is not a number, and say so."""
        import pyarrow as pa
        import pyarrow.csv as pcsv

        offset = 0
        try:
            reader = pcsv.open_csv(self._input(), **self._csv_options(lay, strings=True, block_size=STREAM_BLOCK))
            for batch in reader:
                for canon in batch.schema.names:
                    if canon in NUMERIC:
                        i = _first_bad_number(_trim(batch.column(canon)))
                        if i is not None:
                            raise _not_a_number(self.where(offset + i), canon, batch.column(canon)[i].as_py())
                offset += batch.num_rows
        except pa.ArrowInvalid as exc2:
            raise _unreadable(self.label, exc2) from exc2
        raise _unreadable(self.label, exc) from exc


def _unreadable(label: str, exc: Exception) -> ValidationError:
    """Arrow's CSV parse error as our one line; its "Row #N" counts the header, so N is the line."""
    text = str(exc).strip().splitlines()[0]
    m = re.search(r"Row #(\d+): (.*)", text)
    if m:
        return ValidationError(f"{label}: line {m.group(1)}: {m.group(2)}; every line needs one value per "
                               f"header column (check quotes and delimiters)")
    return ValidationError(f"{label}: not a readable CSV file: {text.removeprefix('CSV parse error: ')}")


def _trim(col: Any) -> Any:
    import pyarrow.compute as pc

    return pc.utf8_trim_whitespace(col)


def _first_bad_number(col: Any) -> int | None:
    """Index of the first non-null string that does not parse as a float, or None."""
    import pyarrow as pa

    from backtest.data.timestamps import _first_failure

    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        return None

    def ok(a: int, b: int) -> bool:
        try:
            col.slice(a, b - a).cast(pa.float64())
            return True
        except pa.ArrowInvalid:
            return False

    return None if ok(0, len(col)) else _first_failure(len(col), ok)


def _not_a_number(where: str, canon: str, value: Any) -> ValidationError:
    name = "adj close" if canon == "adjclose" else canon
    return ValidationError(f'{where}: {name} "{value}" is not a number; write plain numbers such as 1234.5 '
                           f"(no thousands separators or currency signs)")


def _sniff(path: Path, label: str) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except FileNotFoundError as exc:
        raise DataError(f"{label}: no such file") from exc
    except OSError as exc:
        raise DataError(f"{label}: cannot read ({exc.strerror})") from exc
    if not head:
        raise ValidationError(f"{label}: the file is empty; export it again with a header line and data rows")
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"PK\x03\x04"):
        raise ValidationError(f"{label}: this is a zip or Excel file, not CSV or Parquet; "
                              f"export it as CSV (or unzip it) first")
    if path.suffix.lower() in (".parquet", ".pq"):
        raise ValidationError(f"{label}: not a Parquet file (no PAR1 header); is it a CSV with the wrong name?")
    if b"\x00" in head:
        raise ValidationError(f"{label}: binary data, not a CSV or Parquet file")
    return "csv"


def expand(paths: list[Path]) -> list[Path]:
    """Files to import: the files given, and the data files found (recursively) in directories given."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*")
                           if f.is_file() and not f.name.startswith(".") and f.name.lower().endswith(SUFFIXES))
            if not found:
                raise DataError(f"{p}: no CSV or Parquet files in this directory "
                                f"(looked for {', '.join(SUFFIXES)})")
            out += found
        elif p.exists():
            out.append(p)
        else:
            raise DataError(f"{p}: no such file or directory")
    return list(dict.fromkeys(out))


def symbol_from_name(path: Path) -> str:
    """"yahoofinance-AAPL-20040819-20180120.csv" → "AAPL"; "msft.csv.gz" → "MSFT".

    The first token (split on - _ space) written in capitals that is not a number; else the first
    token that is not a number, upper-cased.
    """
    name = path.name
    for suffix in (".gz", ".csv", ".txt", ".tsv", ".parquet", ".pq"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    tokens = [t for t in re.split(r"[-_\s]+", name) if t]
    upper = [t for t in tokens if re.fullmatch(r"[A-Z^][A-Z0-9.^=]*", t) and not t.isdigit()]
    if upper:
        return upper[0]
    words = [t for t in tokens if not t.isdigit()]
    return (words[0] if words else name).upper()

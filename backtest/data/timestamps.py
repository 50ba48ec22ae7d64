"""Timestamps from vendor files to UTC int64 ns, vectorised (no Python object per row).

Accepted: ISO dates and datetimes (``2020-01-31``, ``2020-01-31 09:30[:00[.123]]``, ``T``, with or
without ``Z``/``+01:00``), US ``1/31/2020 [9:30[:00]] [AM|PM]``, ``2020/01/31``, ``20200131``, epoch
seconds / milliseconds / microseconds / nanoseconds (told apart by magnitude), and Parquet
timestamp and date columns. The format is taken from the first value; a row that does not parse
is reported by its line.

Dates without a time of day stay at midnight UTC (a date is not an instant). Naive datetimes are
local times in ``tz`` when given, else UTC (with a warning). Values with an offset are exact.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from backtest.errors import DataError, ValidationError, did_you_mean

Where = Callable[[int], str]  # row index → "file.csv: line 7"

FORMATS_HELP = ("use ISO 2020-01-31 or 2020-01-31 09:30[:00][+00:00], US 1/31/2020 9:30, "
                "or epoch seconds/milliseconds")
_EPOCH = re.compile(r"^-?\d+(\.\d*)?$")
_YYYYMMDD = re.compile(r"^(1[89]|2[01])\d\d(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])$")
ISO = re.compile(r"^\d{4}-\d{1,2}-\d{1,2}(?P<time>[T ]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?\s*(?P<tz>Z|[+-]\d{2}:?\d{2})?$")
_SLASH = re.compile(r"^(?P<a>\d{1,4})/(?P<b>\d{1,2})/(?P<c>\d{1,4})(?P<time>\s+\d{1,2}:\d{2}(?P<sec>:\d{2})?)?(?P<ampm>\s*[AaPp][Mm])?$")
_MIN_NS = -5_364_662_400 * 10**9  # 1800-01-01
_MAX_NS = 7_258_118_400 * 10**9  # 2200-01-01


def check_tz(tz: str) -> None:
    """DataError for an unknown IANA zone name, with a suggestion."""
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        try:
            known = zoneinfo.available_timezones()
        except Exception:  # pragma: no cover - no tz database at all
            known = set()
        raise DataError(f'unknown time zone "{tz}".{did_you_mean(tz, known)} '
                        f"Use an IANA name such as America/New_York or Europe/London") from exc


def _first_failure(n: int, ok: Callable[[int, int], bool]) -> int:
    """Index of the first row in [0, n) for which ``ok`` fails, by bisection (ok(0, n) is False)."""
    lo, hi = 0, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(lo, mid):
            lo = mid
        else:
            hi = mid
    return lo


def _cast_or_locate(arr: Any, to: Any, where: Where) -> Any:
    import pyarrow as pa

    try:
        return arr.cast(to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:

        def ok(a: int, b: int) -> bool:
            try:
                arr.slice(a, b - a).cast(to)
                return True
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return False

        i = _first_failure(len(arr), ok)
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            raise ValidationError(f'{where(i)}: cannot read timestamp "{arr[i].as_py()}"; {FORMATS_HELP}') from exc
        raise ValidationError(f"{where(i)}: timestamp {arr[i].as_py()} is outside 1800-2200; "
                              f"check the date format or the epoch unit") from exc


def _strptime(arr: Any, fmt: str, where: Where, hint: str = "") -> Any:
    import pyarrow.compute as pc

    out = pc.strptime(arr, format=fmt, unit="ns", error_is_null=True)
    bad = np.flatnonzero(pc.is_null(out).to_numpy(zero_copy_only=False))
    if len(bad):
        i = int(bad[0])
        raise ValidationError(f'{where(i)}: cannot read timestamp "{arr[i].as_py()}" '
                              f'(expected the format of the first row, "{arr[0].as_py()}"){hint}; {FORMATS_HELP}')
    return out


def _epoch(values: np.ndarray, where: Where) -> np.ndarray:
    """Epoch numbers → ns; the unit (s, ms, us, ns) from the first value's magnitude."""
    first = abs(float(values[0]))
    mult = 10**9 if first < 1e11 else 10**6 if first < 1e14 else 10**3 if first < 1e17 else 1
    if values.dtype.kind in "iu":
        return values.astype(np.int64) * mult
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise ValidationError(f'{where(int(bad[0]))}: timestamp "{values[bad[0]]}" is not a number; {FORMATS_HELP}')
    return np.round(values * mult).astype(np.int64)


def check_date_format(fmt: str) -> None:
    """A ``--date-format`` must hold strptime codes for at least a year, a month and a day."""
    if not all(c in fmt for c in ("%d", "%m")) or not ("%Y" in fmt or "%y" in fmt):
        raise ValidationError(f'--date-format "{fmt}" must give the day, month and year as strptime codes, '
                              'e.g. %d/%m/%Y, %d.%m.%Y %H:%M or %Y%m%d')


def parse_timestamps(arr: Any, tz: str | None, where: Where,
                     date_format: str | None = None) -> tuple[np.ndarray, list[str]]:
    """A pyarrow array of timestamps (no nulls) → (UTC int64 ns, warnings). ``date_format``:
    strptime codes for string timestamps, instead of detecting their format."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    warnings: list[str] = []
    n = len(arr)
    t = arr.type
    kind = "naive"  # naive | date | exact
    if pa.types.is_timestamp(t):
        if t.tz:
            out = _cast_or_locate(arr, pa.timestamp("ns", tz=t.tz), where)
            kind = "exact"
        else:
            out = _cast_or_locate(arr, pa.timestamp("ns"), where)
    elif pa.types.is_date(t):
        out, kind = _cast_or_locate(arr, pa.timestamp("ns"), where), "date"
    elif pa.types.is_integer(t) or pa.types.is_floating(t):
        ns = _epoch(arr.to_numpy(zero_copy_only=False), where)
        return _check_range(ns, where), _tz_ignored(tz, warnings)
    elif (pa.types.is_string(t) or pa.types.is_large_string(t)) and date_format:
        arr = pc.utf8_trim_whitespace(arr)
        out = _strptime(arr, date_format, where, f" (--date-format {date_format})")
        kind = "naive" if any(c in date_format for c in ("%H", "%I", "%M", "%S")) else "date"
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        arr = pc.utf8_trim_whitespace(arr)
        first = arr[0].as_py()
        if _YYYYMMDD.match(first):
            out, kind = _strptime(arr, "%Y%m%d", where), "date"
        elif _EPOCH.match(first):
            num = _cast_or_locate(arr, pa.float64() if "." in first else pa.int64(), where)
            return _check_range(_epoch(num.to_numpy(zero_copy_only=False), where), where), _tz_ignored(tz, warnings)
        elif m := ISO.match(first):
            if m.group("tz"):
                out, kind = _cast_or_locate(arr, pa.timestamp("ns", tz="UTC"), where), "exact"
            else:
                out = _cast_or_locate(arr, pa.timestamp("ns"), where)
                kind = "naive" if m.group("time") else "date"
        elif m := _SLASH.match(first):
            out, kind = _slash(arr, m, where)
            if len(m.group("a")) != 4 and n > 1 and pc.max(pc.day(out)).as_py() <= 12:
                warnings.append(f'dates such as "{first}" were read as month/day/year, but every one of them '
                                "would read as day/month/year too; if the file is day/month/year, import it "
                                "again with --date-format %d/%m/%Y --replace")
        else:
            raise ValidationError(f'{where(0)}: cannot read timestamp "{first}"; {FORMATS_HELP}')
    else:
        raise ValidationError(f"{where(0)}: the timestamp column has type {t}; {FORMATS_HELP}")

    if date_format and not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        warnings.append(f"--date-format {date_format} was not used: the timestamps are typed ({t}), not text")
    if kind == "naive" and tz:
        out = _assume_tz(out, tz, where)
    ns = np.asarray(out.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)
    if kind == "exact":
        _tz_ignored(tz, warnings)
    elif kind == "naive" and not tz and n and np.any(ns % 86_400_000_000_000):
        warnings.append("timestamps have no time zone and were taken as UTC; "
                        "pass --tz (e.g. America/New_York) if they are local times")
    return _check_range(ns, where), warnings


def _tz_ignored(tz: str | None, warnings: list[str]) -> list[str]:
    if tz:
        warnings.append(f"--tz {tz} was not used: the timestamps carry their own zone (epoch or UTC offset)")
    return warnings


def _slash(arr: Any, m: re.Match[str], where: Where) -> tuple[Any, str]:
    if len(m.group("a")) == 4:
        date = "%Y/%m/%d"
    else:
        date = "%m/%d/%Y" if len(m.group("c")) == 4 else "%m/%d/%y"
    hint = "" if date == "%Y/%m/%d" else "; dates with slashes are read as month/day/year"
    if not m.group("time"):
        return _strptime(arr, date, where, hint), "date"
    if m.group("ampm"):
        time = "%I:%M:%S" if m.group("sec") else "%I:%M"
        fmt = f"{date} {time} %p"
    else:
        fmt = f"{date} {'%H:%M:%S' if m.group('sec') else '%H:%M'}"
    return _strptime(arr, fmt, where, hint), "naive"


def _assume_tz(naive: Any, tz: str, where: Where) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    check_tz(tz)
    try:
        return pc.assume_timezone(naive, timezone=tz, ambiguous="raise", nonexistent="raise")
    except pa.ArrowInvalid as exc:
        early = pc.assume_timezone(naive, timezone=tz, ambiguous="earliest", nonexistent="earliest")
        late = pc.assume_timezone(naive, timezone=tz, ambiguous="latest", nonexistent="latest")
        differ = np.flatnonzero(early.cast(pa.int64()).to_numpy() != late.cast(pa.int64()).to_numpy())
        i = int(differ[0]) if len(differ) else 0
        value = str(naive[i].as_py())
        raise ValidationError(f"{where(i)}: local time {value} does not exist or is ambiguous in {tz} "
                              f"(a daylight-saving change); fix the row or give times with a UTC offset") from exc


def _check_range(ns: np.ndarray, where: Where) -> np.ndarray:
    bad = np.flatnonzero((ns < _MIN_NS) | (ns >= _MAX_NS))
    if len(bad):
        from backtest.data.freq import fmt_ts

        i = int(bad[0])
        raise ValidationError(f"{where(i)}: timestamp {fmt_ts(int(ns[i]))} is outside 1800-2200; "
                              f"check the date format or the epoch unit")
    return ns

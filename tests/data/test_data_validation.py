"""Bad input: one line naming the file, the line, what is wrong and how to fix it; nothing written."""

from __future__ import annotations

import re

import pytest
from datahelpers import make_bars, stored_files, to_csv

from backtest.data import ImportFailed
from backtest.errors import DataError, ValidationError

GOOD = "date,open,high,low,close,volume\n2020-01-02,10,11,9,10.5,100\n2020-01-03,10,11,9,10.5,100\n"


def _refused(store, path, message: str, **opts) -> str:
    """Import must fail with ``message`` (a regex) as its single line, and write nothing."""
    with pytest.raises(DataError) as info:
        store.import_files([path], **opts)
    text = str(info.value)
    assert "\n" not in text
    assert re.search(message, text), text
    assert stored_files(store) == []
    return text


CASES = [
    ("missing column", "Date,Open,High,Low,Volume\n2020-01-02,1,2,0.5,10\n",
     r'm\.csv: no "close" column \(found: Date, Open, High, Low, Volume\); name the columns date, open'),
    ("missing timestamp", "open,high,low,close\n1,2,0.5,1\n", r'm\.csv: no "date" column \(found: open, high, low, close\)'),
    ("no header", "2020-01-02,1,2,0.5,1\n2020-01-03,1,2,0.5,1\n", r"m\.csv: the first line looks like data, not a header"),
    ("bad timestamp", GOOD + "2020-13-45,10,11,9,10.5,100\n",
     r'm\.csv: line 4: cannot read timestamp "2020-13-45"; use ISO 2020-01-31'),
    ("bad US timestamp", "date,open,high,low,close\n1/2/2020,1,2,0.5,1\n31/1/2020,1,2,0.5,1\n",
     r'm\.csv: line 3: cannot read timestamp "31/1/2020" .*month/day/year'),
    ("empty timestamp", GOOD + ",10,11,9,10.5,100\n", r"m\.csv: line 4: empty timestamp; .*--dropna"),
    ("not a number", GOOD + "2020-01-06,10,abc,9,10.5,100\n", r'm\.csv: line 4: high "abc" is not a number'),
    ("thousands separator", 'date,open,high,low,close\n2020-01-02,"1,001.5",1002,1000,1001\n',
     r'm\.csv: line 2: open "1,001.5" is not a number; .*thousands separators'),
    ("zero price", GOOD + "2020-01-06,10,11,0,10.5,100\n",
     r"m\.csv: line 4: low is 0; prices must be positive finite numbers"),
    ("negative price", GOOD + "2020-01-06,-10,11,9,10.5,100\n2020-01-07,-1,11,9,10.5,100\n",
     r"m\.csv: line 4: open is -10 \(and 1 more row like it\)"),
    ("absurd price", GOOD + "2020-01-06,1e308,1e308,9,1e308,100\n",
     r"m\.csv: line 4: open is 1e\+308, more than 1e\+12: a price that large is a data error"),
    ("negative volume", GOOD + "2020-01-06,10,11,9,10.5,-5\n", r"m\.csv: line 4: volume is -5; volume must be zero or more"),
    ("high below low", GOOD + "2020-01-06,10,9,11,10.5,100\n",
     r"m\.csv: line 4: high 9 is below low 11; fix the row, or pass --repair"),
    ("open outside range", GOOD + "2020-01-06,12,11,9,10.5,100\n",
     r"m\.csv: line 4: open 12 is outside \[low 9, high 11\]; .*--repair"),
    ("close outside range", GOOD + "2020-01-06,10,11,9,8.5,100\n", r"m\.csv: line 4: close 8.5 is outside \[low 9, high 11\]"),
    ("duplicate", GOOD + "2020-01-06,10,11,9,10.5,100\n2020-01-03,10,11,9,10.5,100\n",
     r"m\.csv: line 5: duplicate timestamp 2020-01-03 \(same as line 3\); remove one, or pass --dedupe"),
    ("missing value", GOOD + "2020-01-06,10,11,,10.5,100\n",
     r"m\.csv: line 4: missing value in low; .*--dropna to skip such rows"),
    ("NaN value", GOOD + "2020-01-06,NaN,11,9,10.5,100\n", r"m\.csv: line 4: missing value in open"),
    ("header only", "date,open,high,low,close\n", r"m\.csv: no data rows, only a header"),
    ("empty file", "", r"m\.csv: the file is empty"),
    ("blank file", "\n\n", r"m\.csv: the file is empty"),
    ("trades without --bars", "time,price,size\n2020-01-02 10:00,1,5\n",
     r"m\.csv: this looks like a file of trades .* pass --bars 1min"),
    ("two close columns", "date,open,high,low,Close,close\n2020-01-02,1,2,0.5,1,1\n",
     r'm\.csv: columns "Close" and "close" both mean close'),
    ("implausible date", "date,open,high,low,close\n0001-01-02,1,2,0.5,1\n", r"m\.csv: line 2: .*"),
    ("not UTF-8", b"date,open,high,low,close\xff\n", r"m\.csv: line 1 is not UTF-8 text"),
    ("binary", b"\x00\x01\x02garbage", r"m\.csv: binary data, not a CSV or Parquet file"),
    ("xlsx", b"PK\x03\x04rest-of-zip", r"m\.csv: this is a zip or Excel file"),
    ("unbalanced quotes", 'date,open,high,low,close\n2020-01-02,"1,2,0.5,1\n',
     r"m\.csv: line 2: Expected 5 columns, got 2: .*one value per header column"),
    ("ragged row", GOOD + "2020-01-06,10,11\n", r"m\.csv: line 4: Expected 6 columns, got 3: 2020-01-06,10,11"),
]


@pytest.mark.parametrize("text,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_file_is_refused_with_its_line(store, write, text, message):
    _refused(store, write("m.csv", text), message)


def test_line_numbers_hold_deep_in_a_large_file(store, write):
    src = make_bars(5000)
    lines = to_csv(src).splitlines()
    lines[4321] = lines[4321].split(",")[0] + ",1,2,3,x,5"
    _refused(store, write("m.csv", "\n".join(lines) + "\n"), r'm\.csv: line 4322: close "x" is not a number')


def test_unknown_time_zone_suggests_one(store, write):
    _refused(store, write("m.csv", GOOD), r'unknown time zone "America/NewYork"\. Did you mean "America/New_York"\?',
             tz="America/NewYork")


def test_nonexistent_local_time_names_the_line(store, write):
    text = "date,open,high,low,close\n2020-03-08 01:30,1,2,0.5,1\n2020-03-08 02:30,1,2,0.5,1\n"
    _refused(store, write("m.csv", text),
             r"m\.csv: line 3: local time 2020-03-08 02:30:00 does not exist or is ambiguous in America/New_York",
             tz="America/New_York")


def test_bad_frequency_and_symbol(store, write):
    _refused(store, write("m.csv", GOOD), r'bad bar frequency "1x": use a count and a unit, e.g. 1s, 5min', bars="1x")
    _refused(store, write("m.csv", GOOD), r'symbol "a/b" is not usable', symbol="a/b")


def test_adjust_needs_adj_close(store, write):
    _refused(store, write("m.csv", GOOD), r'm\.csv: --adjust needs an "adj close" column \(found: date, open', adjust=True)


def test_parquet_problems(store, tmp_path, write):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _refused(store, write("fake.parquet", GOOD), r"fake\.parquet: not a Parquet file \(no PAR1 header\)")
    (tmp_path / "in" / "cut.parquet").write_bytes(b"PAR1" + b"\x00" * 20)
    _refused(store, tmp_path / "in" / "cut.parquet", r"cut\.parquet: not a readable Parquet file")
    pq.write_table(pa.table({"date": ["2020-01-02", "2020-01-03"], "open": ["1", "one"], "high": [2, 2],
                             "low": [0.5, 0.5], "close": [1, 1]}), tmp_path / "in" / "s.parquet")
    _refused(store, tmp_path / "in" / "s.parquet", r's\.parquet: row 2: open "one" is not a number')


def test_missing_path(store, tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: no such file or directory"):
        store.import_files([tmp_path / "nope.csv"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no CSV or Parquet files in this directory"):
        store.import_files([tmp_path / "empty"])


def test_a_bad_file_does_not_stop_the_good_ones(store, write):
    good = write("good.csv", GOOD)
    bad = write("bad.csv", GOOD + "2020-01-06,10,9,11,10.5,100\n")
    also = write("also.csv", GOOD)
    with pytest.raises(ImportFailed) as info:
        store.import_files([good, bad, also])
    err = info.value
    assert str(err).startswith("1 of 3 files were not imported")
    assert len(err.errors) == 1 and "bad.csv: line 4: high 9 is below low 11" in str(err.errors[0])
    assert sorted(r.symbol for r in err.reports) == ["ALSO", "GOOD"]
    assert store.symbols() == ["ALSO", "GOOD"]


def test_a_refused_file_leaves_stored_data_alone(store, write):
    [r] = store.import_files([write("x.csv", GOOD)])
    before = stored_files(store)
    with pytest.raises(ValidationError):
        store.import_files([write("x.csv", GOOD + "2021-01-06,10,11,9,10.5,-1\n")])
    assert stored_files(store) == before
    assert [p.sha256 for p in store.partitions("X")] == [p.sha256 for p in r.written]


DMY = "date,open,high,low,close,volume\n" + "".join(
    f"{d:02d}/{m:02d}/2021,10,11,9,10.5,100\n" for m in range(1, 13) for d in (1, 5, 12))


def test_slashed_dates_that_read_both_ways_say_so_and_date_format_reads_them(store, write, tmp_path):
    """Day/month/year dates whose days are all 12 or less parse as month/day/year: a warning says
    so and names --date-format, which reads them as they are meant."""
    path = write("dmy.csv", DMY)
    [r] = store.import_files([path], symbol="US")
    assert any("--date-format %d/%m/%Y" in w and "would read as day/month/year" in w for w in r.warnings)
    [r] = store.import_files([path], symbol="EU", date_format="%d/%m/%Y")
    assert not any("date-format" in w for w in r.warnings)
    ts = store.read("EU").ts
    days = ts.astype("datetime64[ns]").astype("datetime64[D]")
    assert str(days[0]) == "2021-01-01" and str(days[1]) == "2021-01-05" and str(days[3]) == "2021-02-01"
    # a date the format does not fit names the line; a format without day, month and year is refused
    from backtest.data import Store

    empty = Store(tmp_path / "empty")
    _refused(empty, write("bad.csv", DMY + "31/31/2021,10,11,9,10.5,100\n"), r'bad\.csv: line 38: cannot read '
             r'timestamp "31/31/2021".*--date-format %d/%m/%Y', date_format="%d/%m/%Y")
    _refused(empty, write("x.csv", DMY), r"--date-format \"%d/%Y\" must give the day, month and year",
             date_format="%d/%Y")
    # unambiguous US dates (a day past 12) warn of nothing
    [r] = store.import_files([write("us.csv", GOOD.replace("2020-01-02", "1/2/2020").replace("2020-01-03", "1/13/2020"))],
                             symbol="US2")
    assert not any("date-format" in w for w in r.warnings)

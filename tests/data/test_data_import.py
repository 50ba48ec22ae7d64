"""Importing files: formats, layouts, time zones and the options that relax checks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datahelpers import DAY, MIN, iso_date, iso_minute, make_bars, ns, to_csv

from backtest.data import Store


def _read(store: Store, symbol: str):
    return store.read(symbol)


def _assert_bars_equal(bars, src: dict[str, np.ndarray], volume: bool = True) -> None:
    np.testing.assert_array_equal(bars.ts, src["ts"])
    for c in ("open", "high", "low", "close") + (("volume",) if volume else ()):
        np.testing.assert_array_equal(getattr(bars, c), src[c], err_msg=c)


def test_daily_iso_csv_partitions_by_year(store, write):
    src = make_bars(600, start="2019-06-03")
    path = write("aapl.csv", to_csv(src))
    [report] = store.import_files([path])
    assert report.symbol == "AAPL" and report.rows == 600 and report.freq == "1d"
    assert report.added == 600 and report.unchanged == 0
    parts = store.partitions("AAPL")
    assert [p.year for p in parts] == [2019, 2020, 2021]
    assert [p.path for p in parts] == [f"bars/symbol=AAPL/year={y}.parquet" for y in (2019, 2020, 2021)]
    assert sum(p.rows for p in parts) == 600
    for p in parts:
        meta = pq.ParquetFile(store.path(p)).metadata.metadata
        assert meta[b"bt.sha256"].decode() == p.sha256
        assert p.freq == "1d" and p.size == store.path(p).stat().st_size
        assert p.first_ts // DAY * DAY == p.first_ts  # dates stay at midnight UTC
    bars = _read(store, "aapl")
    _assert_bars_equal(bars, src)
    assert bars.ts.dtype == np.int64 and bars.close.dtype == np.float64 and bars.close.flags.c_contiguous


def test_messy_file_reads_like_the_clean_one(store, write, tmp_path):
    """Reordered, oddly cased and spaced columns, US dates, a BOM and Windows line endings."""
    src = make_bars(300, start="2021-03-01")
    clean = write("clean.csv", to_csv(src))
    us = [f"{int(d[5:7])}/{int(d[8:10])}/{d[:4]}" for d in (iso_date(t) for t in src["ts"])]
    messy_text = to_csv(src, columns=(" Volume", "Close ", "low", "HIGH", " Date ", "Open"), newline="\r\n",
                        extra={" Date ": us})
    messy = write("messy.csv", messy_text.replace(",", ", "), bom=True)
    [a] = store.import_files([clean], symbol="CLEAN")
    [b] = store.import_files([messy], symbol="MESSY")
    assert [p.sha256 for p in a.written] == [p.sha256 for p in b.written]
    _assert_bars_equal(_read(store, "MESSY"), src)


def test_gzip_csv_and_parquet_give_the_same_hashes(store, write, tmp_path):
    src = make_bars(50)
    text = to_csv(src)
    [plain] = store.import_files([write("p.csv", text)], symbol="P")
    [gz] = store.import_files([write("g.csv.gz", text, gz=True)], symbol="G")
    [nogz_suffix] = store.import_files([write("h.csv", text, gz=True)], symbol="H")  # sniffed, not named
    table = pa.table({"Timestamp": pa.array(src["ts"], pa.timestamp("ns", tz="UTC")),
                      **{k.upper(): src[k] for k in ("open", "high", "low", "close", "volume")}})
    pq.write_table(table, tmp_path / "in" / "q.parquet")
    [par] = store.import_files([tmp_path / "in" / "q.parquet"], symbol="Q")
    hashes = {tuple(p.sha256 for p in r.written) for r in (plain, gz, nogz_suffix, par)}
    assert len(hashes) == 1


def test_parquet_with_string_dates_and_integer_prices(store, tmp_path):
    src = make_bars(20)
    table = pa.table({"date": [iso_date(t) for t in src["ts"]], "open": [str(x) for x in src["open"]],
                      "high": src["high"], "low": src["low"], "close": src["close"],
                      "volume": src["volume"].astype(np.int64)})
    path = tmp_path / "x.parquet"
    pq.write_table(table, path)
    store.import_files([path], symbol="X")
    _assert_bars_equal(_read(store, "X"), src)


@pytest.mark.parametrize("unit", [1, 1000])
def test_epoch_seconds_and_milliseconds(store, write, unit):
    src = make_bars(30, start="2022-01-03T14:30", step=MIN)
    epoch = [str(int(t // 1_000_000_000 * unit)) for t in src["ts"]]
    path = write("e.csv", to_csv(src, columns=("time", "open", "high", "low", "close", "volume"), extra={"time": epoch}))
    [r] = store.import_files([path], symbol="E")
    assert r.warnings == ()  # epochs are UTC by definition: no warning
    _assert_bars_equal(_read(store, "E"), src)


def test_us_datetimes_with_tz_become_utc(store, write):
    rows = ["Date,Open,Close,High,Low,Volume",
            "1/15/2020 9:30,10,10.5,11,9.5,100",   # EST: UTC-5
            "1/15/2020 9:31,10,10.5,11,9.5,100",
            "7/15/2020 9:30,10,10.5,11,9.5,100"]   # EDT: UTC-4
    path = write("idx.csv", "\n".join(rows) + "\n")
    [r] = store.import_files([path], symbol="IDX", tz="America/New_York")
    bars = _read(store, "IDX")
    assert bars.ts.tolist() == [ns("2020-01-15T14:30"), ns("2020-01-15T14:31"), ns("2020-07-15T13:30")]
    assert bars.close.tolist() == [10.5, 10.5, 10.5] and bars.high.tolist() == [11, 11, 11]
    assert r.warnings == ()


def test_naive_intraday_times_are_utc_with_a_warning(store, write):
    src = make_bars(5, start="2020-01-02T09:30", step=MIN)
    [r] = store.import_files([write("n.csv", to_csv(src, ts=iso_minute))], symbol="N")
    assert any("taken as UTC" in w and "--tz" in w for w in r.warnings)
    _assert_bars_equal(_read(store, "N"), src)


def test_offsets_z_yyyymmdd_and_split_date_time(store, write):
    a = write("a.csv", "timestamp,open,high,low,close\n2020-01-02T10:00:00+01:00,1,2,0.5,1.5\n"
                       "2020-01-02T09:01:00Z,1,2,0.5,1.5\n")
    store.import_files([a], symbol="A", tz="Asia/Tokyo")  # tz is not applied to values with an offset
    assert _read(store, "A").ts.tolist() == [ns("2020-01-02T09:00"), ns("2020-01-02T09:01")]
    b = write("b.csv", "Date,Open,High,Low,Close\n20200102,1,2,0.5,1.5\n20200103,1,2,0.5,1.5\n")
    store.import_files([b], symbol="B")
    assert _read(store, "B").ts.tolist() == [ns("2020-01-02"), ns("2020-01-03")]
    c = write("c.csv", "Date;Time;Open;High;Low;Close;Vol\n2020-01-02;15:30:00;1;2;0.5;1.5;7\n"
                       "2020-01-02;15:31:00;1;2;0.5;1.5;8\n")
    store.import_files([c], symbol="C", tz="Europe/Berlin")
    bars = _read(store, "C")
    assert bars.ts.tolist() == [ns("2020-01-02T14:30"), ns("2020-01-02T14:31")]
    assert bars.volume.tolist() == [7, 8]


def test_symbol_column_splits_one_file_into_symbols(store, write):
    a, b = make_bars(10, seed=1), make_bars(12, seed=2)
    lines = ["Ticker,Date,Open,High,Low,Close,Volume"]
    for sym, src in (("aaa", a), ("BBB", b)):
        for i in range(len(src["ts"])):
            lines.append(f"{sym},{iso_date(src['ts'][i])},{src['open'][i]},{src['high'][i]},{src['low'][i]},"
                         f"{src['close'][i]},{src['volume'][i]:.0f}")
    path = write("universe.csv", "\n".join(lines) + "\n")
    reports = store.import_files([path])
    assert sorted(r.symbol for r in reports) == ["AAA", "BBB"]
    _assert_bars_equal(_read(store, "AAA"), a)
    _assert_bars_equal(_read(store, "BBB"), b)
    other = Store(store.root.parent / "other")
    [only] = other.import_files([path], symbol="bbb")  # --symbol picks that symbol's rows
    assert only.symbol == "BBB" and other.symbols() == ["BBB"]


def test_symbol_from_vendor_file_names(store, write):
    src = to_csv(make_bars(3))
    reports = store.import_files([write("yahoofinance-AAPL-20040819-20180120.csv", src),
                                  write("msft_daily.csv.gz", src, gz=True), write("BRK.B.csv", src)])
    assert [r.symbol for r in reports] == ["AAPL", "MSFT", "BRK.B"]


def test_adjust_rescales_prices_by_adj_close(store, write):
    src = make_bars(20)
    path = write("adj.csv", to_csv(src, columns=("Date", "Open", "High", "Low", "Close", "Adj Close", "Volume")))
    store.import_files([path], symbol="ADJ", adjust=True)
    bars = _read(store, "ADJ")
    adj = np.array([float(f"{c * 0.5:.4f}") for c in src["close"]])
    factor = adj / src["close"]
    np.testing.assert_allclose(bars.close, adj, rtol=1e-12)
    np.testing.assert_allclose(bars.open, src["open"] * factor, rtol=1e-12)
    np.testing.assert_array_equal(bars.volume, src["volume"])
    store.import_files([path], symbol="RAW")  # without --adjust the adj close column is ignored
    np.testing.assert_array_equal(_read(store, "RAW").close, src["close"])


def test_missing_volume_is_nan(store, write):
    src = make_bars(5)
    store.import_files([write("nv.csv", to_csv(src, columns=("date", "open", "high", "low", "close")))], symbol="NV")
    assert np.isnan(_read(store, "NV").volume).all()


def test_directory_import_finds_data_files_recursively(store, write, tmp_path):
    write("d/x/one.csv", to_csv(make_bars(3)))
    write("d/two.csv.gz", to_csv(make_bars(3)), gz=True)
    write("d/notes.md", "not data")
    reports = store.import_files([tmp_path / "in" / "d"])
    assert sorted(r.symbol for r in reports) == ["ONE", "TWO"]


def test_unsorted_rows_are_sorted_with_a_warning(store, write):
    src = make_bars(10)
    text = to_csv(src).splitlines()
    path = write("u.csv", "\n".join([text[0], *reversed(text[1:])]) + "\n")
    [r] = store.import_files([path], symbol="U")
    assert any("not in time order" in w for w in r.warnings)
    _assert_bars_equal(_read(store, "U"), src)


def test_dedupe_keeps_the_last_row(store, write):
    text = "date,open,high,low,close\n2020-01-02,1,2,1,1\n2020-01-03,1,2,1,1\n2020-01-02,1,3,1,2\n"
    [r] = store.import_files([write("d.csv", text)], symbol="D", dedupe=True)
    bars = _read(store, "D")
    assert bars.ts.tolist() == [ns("2020-01-02"), ns("2020-01-03")]
    assert bars.close.tolist() == [2, 1] and r.rows == 2
    assert any("duplicate" in w for w in r.warnings)


def test_dropna_skips_rows_with_missing_values(store, write):
    text = "date,open,high,low,close,volume\n2020-01-02,1,2,1,1,5\n2020-01-03,1,,1,1,5\n,1,2,1,1,5\n" \
           "2020-01-06,1,2,1,1.5,NaN\n2020-01-07,1,2,1,1.25,6\n"
    [r] = store.import_files([write("n.csv", text)], symbol="N", dropna=True)
    assert _read(store, "N").close.tolist() == [1, 1.25]
    assert any("without a timestamp" in w for w in r.warnings)
    assert any("2 rows with missing values (first at line 3)" in w for w in r.warnings)


def test_repair_widens_high_and_low(store, write):
    text = "date,open,high,low,close\n2020-01-02,10,11,9,10.5\n2020-01-03,12,11,10,10.5\n2020-01-06,10,11,10.2,9.5\n"
    [r] = store.import_files([write("r.csv", text)], symbol="R", repair=True)
    bars = _read(store, "R")
    assert bars.high.tolist() == [11, 12, 11] and bars.low.tolist() == [9, 10, 9.5]
    assert any("repaired high/low of 2 rows" in w and "line 3" in w for w in r.warnings)


def test_delimiters_semicolon_tab_and_quotes(store, write):
    src = make_bars(4)
    text = to_csv(src)
    store.import_files([write("s.csv", text.replace(",", ";"))], symbol="S")
    store.import_files([write("t.tsv", text.replace(",", "\t"))], symbol="T")
    quoted = "\n".join(",".join(f'"{c}"' for c in line.split(",")) for line in text.splitlines()) + "\n"
    store.import_files([write("q.csv", quoted)], symbol="Q")
    for sym in "STQ":
        _assert_bars_equal(_read(store, sym), src)


def test_import_arrays_validates_like_files(store):
    src = make_bars(30)
    r = store.import_arrays("arr", src["ts"], src["open"], src["high"], src["low"], src["close"], src["volume"])
    assert r.symbol == "ARR" and r.rows == 30
    _assert_bars_equal(_read(store, "ARR"), src)
    from backtest.errors import ValidationError

    days = src["ts"].astype("datetime64[ns]").astype("datetime64[D]")  # datetime64 of another unit
    r = store.import_arrays("arr", days, src["open"], src["high"], src["low"], src["close"], src["volume"])
    assert r.added == 0 and r.unchanged == 1
    with pytest.raises(ValidationError, match="ts must be int64 nanoseconds"):
        store.import_arrays("arr", src["ts"] / 1.0, src["open"], src["high"], src["low"], src["close"])
    bad = dict(src, high=src["low"] - 1)
    with pytest.raises(ValidationError, match=r"ARR2 \(arrays\): row 1: high 97.7 is below low 98.7 \(and 29 more rows like it\)"):
        store.import_arrays("arr2", bad["ts"], bad["open"], bad["high"], bad["low"], bad["close"])

"""The store: content hashes, re-import and append, replace, resolve/read_bars, remove, verify."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from datahelpers import DAY, MIN, iso_date, make_bars, ns, stored_files, to_csv

from backtest.data import Partition, Store, file_content_hash, read_bars
from backtest.data.partition import Columns, content_hash
from backtest.errors import DataError


def _import(store: Store, symbol: str, src: dict[str, np.ndarray], **kw):
    return store.import_arrays(symbol, src["ts"], src["open"], src["high"], src["low"], src["close"], src["volume"],
                               **kw)


def _slice(src: dict[str, np.ndarray], a: str | None = None, b: str | None = None) -> dict[str, np.ndarray]:
    ts = src["ts"]
    mask = np.ones(len(ts), bool)
    if a:
        mask &= ts >= ns(a)
    if b:
        mask &= ts < ns(b)
    return {k: v[mask] for k, v in src.items()}


def _hashes(store: Store, symbol: str) -> dict[int, str]:
    return {p.year: p.sha256 for p in store.partitions(symbol)}


# ---- content hash -------------------------------------------------------------------------------

def test_hash_is_sha256_of_the_documented_encoding():
    src = make_bars(7)
    cols = Columns(src["ts"], src["open"], src["high"], src["low"], src["close"], src["volume"])
    header = json.dumps({"format": "bt-bars-1", "rows": 7,
                         "columns": [["ts", "int64"], ["open", "float64"], ["high", "float64"], ["low", "float64"],
                                     ["close", "float64"], ["volume", "float64"]]},
                        sort_keys=True, separators=(",", ":")) + "\n"
    data = b"".join(np.ascontiguousarray(src[c], dtype="<f8" if c != "ts" else "<i8").tobytes()
                    for c in ("ts", "open", "high", "low", "close", "volume"))
    assert content_hash(cols) == hashlib.sha256(header.encode() + data).hexdigest()
    nan_volume = Columns(*cols.arrays()[:5], np.full(7, np.nan))
    other_nan = Columns(*cols.arrays()[:5], np.full(7, np.float64("-nan")))
    assert content_hash(nan_volume) == content_hash(other_nan)  # one NaN bit pattern


def test_hash_follows_the_data_not_the_file_bytes(store, tmp_path):
    _import(store, "H", make_bars(300))
    p = store.partitions("H")[0]
    path = store.path(p)
    before = path.read_bytes()
    table = pq.read_table(path)  # rewrite the same data with another codec, keeping the metadata
    pq.write_table(table, path, compression="zstd", use_dictionary=True)
    assert path.read_bytes() != before
    assert file_content_hash(path) == p.sha256
    bars = read_bars("H", [(path, p.sha256)], p.first_ts, p.last_ts, 0)
    assert len(bars) == p.rows and bars.partitions == (p.sha256,)
    assert store.verify() == []


def test_verify_finds_a_file_changed_outside_bt(store):
    _import(store, "V", make_bars(20))
    p = store.partitions("V")[0]
    table = pq.read_table(store.path(p))
    pq.write_table(table.slice(0, 10).replace_schema_metadata(table.schema.metadata), store.path(p))
    [problem] = store.verify()
    assert p.path in problem and "differs from the manifest" in problem


# ---- re-import, append, replace ----------------------------------------------------------------

def test_reimporting_identical_data_changes_nothing(store, write):
    src = make_bars(700, start="2018-01-01")
    path = write("same.csv", to_csv(src))
    [first] = store.import_files([path])
    manifest = (store.root / "bars" / "manifest.json").read_bytes()
    mtimes = {f: (store.root / "bars" / f).stat().st_mtime_ns for f in stored_files(store)}
    [again] = store.import_files([path])
    assert again.written == () and again.added == 0 and again.unchanged == 3
    assert (store.root / "bars" / "manifest.json").read_bytes() == manifest
    assert {f: (store.root / "bars" / f).stat().st_mtime_ns for f in stored_files(store)} == mtimes
    assert [p.sha256 for p in first.written] == list(_hashes(store, "SAME").values())


def test_appending_a_year_writes_only_that_year(store):
    src = make_bars(1000, start="2018-01-01")  # through 2021-10
    _import(store, "A", _slice(src, b="2021-01-01"))
    before = _hashes(store, "A")
    r = _import(store, "A", src)  # the old years again, identical, plus 2021
    assert [p.year for p in r.written] == [2021] and r.unchanged == 3
    assert r.added == len(_slice(src, "2021-01-01")["ts"])
    after = _hashes(store, "A")
    assert {y: after[y] for y in before} == before


def test_extending_the_last_year_rewrites_only_it(store):
    src = make_bars(900, start="2018-01-01")
    _import(store, "E", _slice(src, b="2020-07-01"))
    before = _hashes(store, "E")
    r = _import(store, "E", _slice(src, "2020-07-01"))  # only new rows
    assert [p.year for p in r.written] == [2020, 2021] and r.unchanged == 0
    after = _hashes(store, "E")
    assert after[2018] == before[2018] and after[2019] == before[2019]
    assert after[2020] != before[2020] and 2021 in after and 2021 not in before
    np.testing.assert_array_equal(store.read("E").close, src["close"])


def test_differing_overlap_is_an_error_unless_replace(store, write):
    src = make_bars(700, start="2018-01-01")
    store.import_files([write("o.csv", to_csv(src))])
    before = _hashes(store, "O")
    changed = {k: v.copy() for k, v in src.items()}
    changed["close"][300] = round(changed["close"][300] + 0.01, 2)  # a day in 2019
    changed["high"][300] = max(changed["high"][300], changed["close"][300])
    path = write("o.csv", to_csv(changed))
    with pytest.raises(DataError, match=rf"o\.csv: line 302: the bar at {iso_date(src['ts'][300])} differs from the "
                                         r"stored O bar \(close .* here, .* stored\); pass --replace"):
        store.import_files([path])
    assert _hashes(store, "O") == before
    [r] = store.import_files([path], replace=True)
    assert [p.year for p in r.written] == [2019] and r.unchanged == 2 and r.replaced == 700
    after = _hashes(store, "O")
    assert after[2018] == before[2018] and after[2020] == before[2020] and after[2019] != before[2019]
    assert store.read("O").close[300] == changed["close"][300]


def test_replace_swaps_only_the_new_file_s_time_span(store):
    src = make_bars(700, start="2018-01-01")
    _import(store, "R", src)
    patch = _slice(src, "2019-03-01", "2019-07-01")
    patch = {k: v[::2].copy() for k, v in patch.items()}  # the vendor dropped every other bar there
    patch["close"] = patch["close"] * 1.0  # same prices
    r = _import(store, "R", patch, replace=True)
    assert [p.year for p in r.written] == [2019]
    bars = store.read("R")
    span = (src["ts"] >= patch["ts"][0]) & (src["ts"] <= patch["ts"][-1])
    expect = np.concatenate([src["ts"][~span & (src["ts"] < patch["ts"][0])], patch["ts"],
                             src["ts"][~span & (src["ts"] > patch["ts"][-1])]])
    np.testing.assert_array_equal(bars.ts, expect)


def test_replace_can_empty_a_year(store):
    a = make_bars(30, start="2019-12-02")  # 2019-12 and 2020-01
    _import(store, "G", a)
    b = {k: v[[0, -1]] for k, v in a.items()}  # keep only the first and the last bar: 2019 and 2020
    r = _import(store, "G", b, replace=True)
    assert r.removed == () and len(store.read("G")) == 2
    c = _slice(make_bars(30, start="2018-12-03"), b="2019-01-01")  # a year before: span ends in 2018
    _import(store, "G2", make_bars(5, start="2019-06-03"))
    r = _import(store, "G2", {k: np.concatenate([c[k], make_bars(3, start="2020-01-06")[k]]) for k in c},
                replace=True)
    assert r.removed == (2019,) and [p.year for p in store.partitions("G2")] == [2018, 2020]
    assert not (store.root / "bars" / "symbol=G2" / "year=2019.parquet").exists()


def test_other_frequency_is_refused(store):
    _import(store, "F", make_bars(50))
    with pytest.raises(DataError, match=r"F holds 1d bars and this file has 1min bars; .*bt data rm F"):
        _import(store, "F", make_bars(50, start="2021-01-04T14:30", step=MIN))


# ---- lookup, resolve and read ------------------------------------------------------------------

def test_partitions_and_unknown_symbols(store):
    with pytest.raises(DataError, match=r'unknown symbol "AAPL": the data store at .* is empty; .*bt data demo'):
        store.partitions("AAPL")
    _import(store, "AAPL", make_bars(300, start="2019-06-03"))
    parts = store.partitions("aapl")
    assert all(isinstance(p, Partition) for p in parts) and [p.year for p in parts] == [2019, 2020]
    assert store.symbols() == ["AAPL"]
    with pytest.raises(DataError) as info:
        store.partitions("APPL")
    assert str(info.value) == 'unknown symbol "APPL". Did you mean "AAPL"?'
    with pytest.raises(DataError, match=r'unknown symbol "ZZZZZZ"\. `bt data ls` lists the symbols'):
        store.partitions("ZZZZZZ")


@pytest.fixture
def five_years(store):
    src = make_bars(1300, start="2018-01-01")  # 2018 .. 2022-12
    _import(store, "Y", src)
    return src


@pytest.mark.parametrize("start,warmup,years", [
    ("2020-01-01", 0, [2020]),
    ("2020-01-01", 10, [2019, 2020]),
    ("2020-01-01", 300, [2018, 2019, 2020]),
    ("2020-03-02", 10, [2020]),
    ("2020-03-02", 60, [2019, 2020]),
    ("2020-01-01", 10_000, [2018, 2019, 2020]),
])
def test_resolve_picks_the_fewest_partitions(store, five_years, start, warmup, years):
    parts = store.resolve("Y", ns(start), ns("2020-12-31"), warmup)
    assert [p.year for p in parts] == years


def test_resolve_spanning_years_and_errors(store, five_years):
    assert [p.year for p in store.resolve("Y", ns("2019-06-01"), ns("2021-02-01"), 0)] == [2019, 2020, 2021]
    with pytest.raises(DataError, match=r"no bars for Y from 2020-01-04 to 2020-01-05; the store has Y from "
                                        r"2018-01-01 to 2022-12-23"):
        store.resolve("Y", ns("2020-01-04"), ns("2020-01-05"), 0)  # a weekend inside a partition
    with pytest.raises(DataError, match=r"no bars for Y from 2030-01-01 to 2031-01-01"):
        store.resolve("Y", ns("2030-01-01"), ns("2031-01-01"), 0)


def test_read_bars_returns_warmup_range_and_hashes(store, five_years):
    src = five_years
    start, end = ns("2020-03-02"), ns("2021-06-30")
    parts = store.resolve("Y", start, end, 60)
    bars = read_bars("Y", [(store.path(p), p.sha256) for p in parts], start, end, 60)
    first = int(np.searchsorted(src["ts"], start))
    last = int(np.searchsorted(src["ts"], end, "right"))
    assert bars.start == 60 and len(bars) == 60 + last - first
    np.testing.assert_array_equal(bars.ts, src["ts"][first - 60:last])
    np.testing.assert_array_equal(bars.close, src["close"][first - 60:last])
    assert bars.partitions == tuple(p.sha256 for p in parts)
    for a in (bars.open, bars.high, bars.low, bars.close, bars.volume):
        assert a.dtype == np.float64 and a.flags.c_contiguous
    assert bars.ts.dtype == np.int64 and bars.ts.flags.c_contiguous
    early = store.read("Y", ns("2018-01-01"), ns("2018-02-01"), warmup_bars=5)  # no history before: start 0
    assert early.start == 0 and early.ts[0] == src["ts"][0]
    end_inclusive = store.read("Y", ns("2018-01-01"), int(src["ts"][9]))
    assert len(end_inclusive) == 10


def test_read_bars_refuses_a_changed_or_missing_partition(store, five_years):
    parts = store.resolve("Y", ns("2020-01-01"), ns("2020-12-31"), 0)
    files = [(store.path(p), p.sha256) for p in parts]
    _import(store, "Y", {k: v[-3:] for k, v in five_years.items()} | {"close": five_years["close"][-3:] * 1.0},
            replace=False)  # identical: the plan stays valid
    read_bars("Y", files, ns("2020-01-01"), ns("2020-12-31"), 0)
    with pytest.raises(DataError, match=r"partition .*year=2020\.parquet of Y changed since this run was planned"):
        read_bars("Y", [(files[0][0], "0" * 64)], ns("2020-01-01"), ns("2020-12-31"), 0)
    store.remove("Y")
    with pytest.raises(DataError, match=r"partition file .*year=2020\.parquet is missing"):
        read_bars("Y", files, ns("2020-01-01"), ns("2020-12-31"), 0)


def test_partitions_read_as_pyarrow_parquet_reads_them_and_damage_is_a_clear_error(store, tmp_path):
    """Reading goes through pyarrow's Parquet reader directly (``pyarrow.parquet`` would import
    ``pyarrow.fs`` and ssl at every worker's first shard); it must read what ``ParquetFile`` reads."""
    from backtest.data.partition import COLUMNS, embedded_hash, open_partition, read_columns

    _import(store, "A", make_bars(300, start="2019-06-03"))
    for p in store.partitions("A"):
        pf = open_partition(store.path(p))
        want = pq.ParquetFile(str(store.path(p)))
        assert embedded_hash(pf) == p.sha256 == want.metadata.metadata[b"bt.sha256"].decode()
        assert pf.metadata.num_rows == want.metadata.num_rows
        got = read_columns(pf)
        table = want.read(columns=list(COLUMNS))
        for name, arr in zip(COLUMNS, got.arrays(), strict=True):
            assert arr.tobytes() == table.column(name).to_numpy().astype(arr.dtype).tobytes(), name
    bad = tmp_path / "year=2020.parquet"
    bad.write_bytes(b"not parquet" * 100)
    with pytest.raises(DataError, match=r"partition file .*year=2020\.parquet is unreadable \(.*\); re-import"):
        open_partition(bad)


def test_remove(store):
    _import(store, "A", make_bars(300, start="2019-06-03"))
    _import(store, "B", make_bars(10))
    store.remove("a")
    assert store.symbols() == ["B"]
    assert not (store.root / "bars" / "symbol=A").exists()
    assert stored_files(store) == sorted(["manifest.json", f"symbol=B/year={2020}.parquet"])
    with pytest.raises(DataError, match=r'unknown symbol "A"'):
        store.remove("A")


def test_summary(store):
    _import(store, "A", make_bars(300, start="2019-06-03"))
    [s] = store.summary()
    assert (s.symbol, s.rows, s.freq, s.partitions) == ("A", 300, "1d", 2)
    assert s.size == sum(p.size for p in store.partitions("A")) > 0
    assert s.first_ts == ns("2019-06-03") and s.last_ts // DAY * DAY == s.last_ts

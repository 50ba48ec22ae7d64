"""Trades → bars through DuckDB, checked against a plain Python aggregation; streaming memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
from datahelpers import MIN, ns

from backtest.errors import DataError, ValidationError


def _trades(n: int, seed: int = 0, span_min: int = 120, start: str = "2021-03-04T14:30"):
    rng = np.random.default_rng(seed)
    ms = np.sort(rng.integers(0, span_min * 60_000, n))
    ms[5:9] = ms[5]  # ties: several trades in the same millisecond
    ts = ns(start) + ms * 1_000_000
    price = np.round(50 + np.cumsum(rng.normal(0, 0.02, n)), 2)
    size = rng.integers(1, 300, n).astype(float)
    return ts, price, size


def _reference(ts, price, size, step):
    """Bars by the book: order trades by time (file order on ties), then first/max/min/last/sum."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i in sorted(range(len(ts)), key=lambda i: (ts[i], i)):
        groups[ts[i] // step * step].append(i)
    rows = []
    for b in sorted(groups):
        idx = groups[b]
        rows.append((b, price[idx[0]], max(price[i] for i in idx), min(price[i] for i in idx), price[idx[-1]],
                     sum(size[i] for i in idx)))
    return [np.array(c) for c in zip(*rows, strict=True)]


def _csv(ts, price, size=None, header="timestamp,price,size") -> str:
    text = np.datetime_as_string(ts.astype("datetime64[ns]"), unit="ms")
    lines = [header]
    for i in range(len(ts)):
        lines.append(f"{text[i]}Z,{price[i]:.2f}" + (f",{size[i]:.0f}" if size is not None else ""))
    return "\n".join(lines) + "\n"


def _check(bars, expect) -> None:
    for got, want in zip((bars.ts, bars.open, bars.high, bars.low, bars.close, bars.volume), expect, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("freq,step", [("1min", MIN), ("5min", 5 * MIN), ("1s", 1_000_000_000)])
def test_trades_aggregate_like_the_reference(store, write, freq, step):
    ts, price, size = _trades(3000)
    [r] = store.import_files([write("es.csv", _csv(ts, price, size))], symbol="ES", bars=freq)
    expect = _reference(ts, price, size, step)
    _check(store.read("ES"), expect)
    assert r.freq == freq and r.rows == len(expect[0])
    assert any(f"aggregated 3000 trades into {len(expect[0])} bars of {freq}" in w for w in r.warnings)


def test_unsorted_trades_break_ties_by_file_order(store, write):
    ts, price, size = _trades(2000, seed=3)
    order = np.random.default_rng(1).permutation(len(ts))
    ts, price, size = ts[order], price[order], size[order]
    store.import_files([write("u.csv.gz", _csv(ts, price, size), gz=True)], symbol="U", bars="1min")
    _check(store.read("U"), _reference(ts, price, size, MIN))


def test_trades_with_a_symbol_column_and_no_size(store, write):
    ts, price, _ = _trades(400, seed=5)
    syms = np.where(np.arange(400) % 3 == 0, "aaa", "BBB")
    text = _csv(ts, price, header="Time,Last").splitlines()
    text = ["Sym," + text[0]] + [f"{s},{line}" for s, line in zip(syms, text[1:], strict=True)]
    reports = store.import_files([write("multi.csv", "\n".join(text) + "\n")], bars="1min")
    assert sorted(r.symbol for r in reports) == ["AAA", "BBB"]
    for sym, mask in (("AAA", syms == "aaa"), ("BBB", syms == "BBB")):
        bars = store.read(sym)
        expect = _reference(ts[mask], price[mask], np.zeros(mask.sum()), MIN)
        _check(bars, expect[:5] + [bars.volume])
        assert np.isnan(bars.volume).all()


def test_minute_bars_resample_to_five_minutes(store, write):
    lines = ["datetime,open,high,low,close,volume"]
    t0 = ns("2021-03-04T14:30")
    rng = np.random.default_rng(2)
    o = np.round(100 + rng.normal(0, 1, 12), 2)
    c = np.round(o + rng.normal(0, 0.2, 12), 2)
    h, lo = np.maximum(o, c) + 0.5, np.minimum(o, c) - 0.5
    for i in range(12):
        lines.append(f"{np.datetime64(t0 + i * MIN, 'ns').astype('datetime64[m]')},{o[i]},{h[i]},{lo[i]},{c[i]},{i + 1}")
    store.import_files([write("m.csv", "\n".join(lines) + "\n")], symbol="M", bars="5min")
    bars = store.read("M")
    assert bars.ts.tolist() == [t0, t0 + 5 * MIN, t0 + 10 * MIN]
    assert bars.open.tolist() == [o[0], o[5], o[10]] and bars.close.tolist() == [c[4], c[9], c[11]]
    assert bars.high.tolist() == [h[:5].max(), h[5:10].max(), h[10:].max()]
    assert bars.volume.tolist() == [15, 40, 23]


def test_trade_errors_name_the_line(store, write):
    ts, price, size = _trades(50)
    lines = _csv(ts, price, size).splitlines()
    bad = lines.copy()
    bad[30] = bad[30].split(",")[0] + ",-1,5"
    with pytest.raises(ValidationError, match=r"t\.csv: line 31: price is -1; it must be a positive finite number"):
        store.import_files([write("t.csv", "\n".join(bad) + "\n")], symbol="T", bars="1min")
    bad = lines.copy()
    bad[12] = "not-a-time,1,1"
    with pytest.raises(ValidationError, match=r't\.csv: line 13: cannot read timestamp "not-a-time"'):
        store.import_files([write("t.csv", "\n".join(bad) + "\n")], symbol="T", bars="1min")
    bad = lines.copy()
    bad[40] = bad[40].split(",")[0] + ",1,"
    with pytest.raises(ValidationError, match=r"t\.csv: line 41: missing value; .*--dropna"):
        store.import_files([write("t.csv", "\n".join(bad) + "\n")], symbol="T", bars="1min")
    [r] = store.import_files([write("t.csv", "\n".join(bad) + "\n")], symbol="T", bars="1min", dropna=True)
    assert any("dropped 1 rows" in w for w in r.warnings)
    with pytest.raises(ValidationError, match=r"t\.csv: no data rows"):
        store.import_files([write("t.csv", lines[0] + "\n")], symbol="T", bars="1min")
    with pytest.raises(DataError, match=r'no "price" column \(found: time, what\); name the columns timestamp, price'):
        store.import_files([write("t.csv", "time,what\n1,2\n")], symbol="T", bars="1min")
    with pytest.raises(DataError, match=r'no "timestamp" column \(found: when, price\)'):
        store.import_files([write("t.csv", "when,price\n1,2\n")], symbol="T", bars="1min")


def test_errors_deep_in_a_stream_name_the_right_line(store, write, monkeypatch):
    import backtest.data.sources as sources

    monkeypatch.setattr(sources, "STREAM_BLOCK", 4096)  # many small batches
    ts, price, size = _trades(5000)
    lines = _csv(ts, price, size).splitlines()
    lines[4000] = lines[4000].split(",")[0] + ",x,1"
    with pytest.raises(ValidationError, match=r't\.csv: line 4001: price "x" is not a number'):
        store.import_files([write("t.csv", "\n".join(lines) + "\n")], symbol="T", bars="1min")
    lines[4000] = lines[4000].split(",")[0] + ",0,1"
    with pytest.raises(ValidationError, match=r"t\.csv: line 4001: price is 0"):
        store.import_files([write("t.csv", "\n".join(lines) + "\n")], symbol="T", bars="1min")


def test_a_large_trade_file_streams_in_bounded_memory(tmp_path):
    """1.6 M trades (~55 MB): Python and Arrow memory stay a small fraction of the file."""
    n = 1_600_000
    rng = np.random.default_rng(0)
    ms = np.sort(rng.integers(0, 20 * 86_400_000, n)) + 1_577_836_800_000
    path = tmp_path / "big.csv"
    pcsv.write_csv(pa.table({"time": pa.array(ms, pa.timestamp("ms")),
                             "price": np.round(100 + np.cumsum(rng.normal(0, 0.01, n)), 2),
                             "size": rng.integers(1, 500, n)}), path)
    size = path.stat().st_size
    script = textwrap.dedent(f"""
        import sys, tracemalloc
        from pathlib import Path
        import pyarrow as pa
        import backtest.data.sources as sources
        from backtest.data import Store
        sources.STREAM_BLOCK = 256 << 10
        store = Store(Path({str(tmp_path / "root")!r}))
        tiny = Path({str(tmp_path / "tiny.csv")!r})
        tiny.write_text("time,price,size\\n2019-01-02 10:00:00,1,1\\n")
        store.import_files([tiny], symbol="TINY", bars="1min")  # load every module first
        tracemalloc.start()
        [r] = store.import_files([Path({str(path)!r})], symbol="BIG", bars="1min")
        print(r.rows, tracemalloc.get_traced_memory()[1], pa.default_memory_pool().max_memory())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows, py_peak, arrow_peak = map(int, out.stdout.split())
    assert rows == 20 * 1440  # every minute of 20 days has trades
    assert py_peak < size * 0.1, (py_peak, size)  # no Python object (or whole-file array) per row
    assert arrow_peak < size * 0.5, (arrow_peak, size)  # Arrow holds a few blocks, not the file

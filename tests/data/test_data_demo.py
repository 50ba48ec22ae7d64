"""The demo universe: deterministic, plausible, and the sizes the benchmarks rely on."""

from __future__ import annotations

import numpy as np
import pytest

from backtest.data import Store
from backtest.data.demo import write_demo
from backtest.errors import DataError


def _files(store: Store) -> dict[str, bytes]:
    return {str(p.relative_to(store.root)): p.read_bytes() for p in sorted((store.root / "bars").rglob("*.parquet"))}


def test_daily_defaults(store):
    names = write_demo(store, symbols=20)
    assert names == [f"DEMO{i:02d}" for i in range(20)] == store.symbols()
    parts = store.partitions("DEMO07")
    assert [p.year for p in parts] == list(range(2015, 2025)) and all(p.freq == "1d" for p in parts)
    bars = store.read("DEMO07")
    days = bars.ts.astype("datetime64[ns]").astype("datetime64[D]")
    assert len(bars) == int(np.is_busday(np.arange("2015-01-01", "2025-01-01", dtype="datetime64[D]")).sum())
    assert np.is_busday(days).all() and (bars.ts % 86_400_000_000_000 == 0).all()
    assert (bars.high >= np.maximum(bars.open, bars.close)).all() and (bars.low <= np.minimum(bars.open, bars.close)).all()
    assert (bars.low > 0).all() and (bars.volume > 0).all()
    assert np.array_equal(np.round(bars.close, 2), bars.close)  # cents
    gaps = bars.open[1:] / bars.close[:-1] - 1
    assert (gaps != 0).mean() > 0.9 and np.abs(gaps).max() > 0.02  # overnight gaps, some large
    assert ((bars.high > np.maximum(bars.open, bars.close)).mean() > 0.9)  # wicks
    closes = {s: store.read(s).close[-1] for s in names[:5]}
    assert len(set(closes.values())) == 5  # the symbols differ


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    a, b, c = (Store(tmp_path / n) for n in "abc")
    for s in (a, b):
        write_demo(s, symbols=3, start_year=2020, end_year=2021, seed=7)
    write_demo(c, symbols=3, start_year=2020, end_year=2021, seed=8)
    assert _files(a) == _files(b)
    assert [p.sha256 for p in a.partitions("DEMO01")] == [p.sha256 for p in b.partitions("DEMO01")]
    assert [p.sha256 for p in a.partitions("DEMO01")] != [p.sha256 for p in c.partitions("DEMO01")]


def test_minute_bars_for_the_benchmarks(store):
    [name] = write_demo(store, symbols=1, freq="1min", start_year=2020, days=252)
    bars = store.read(name)
    assert len(bars) == 98_280 == 252 * 390
    local = bars.ts.astype("datetime64[ns]").astype("datetime64[m]")
    minutes = (local - local.astype("datetime64[D]")).astype(np.int64)  # UTC minute of day
    # 09:30 New York is 14:30 UTC in winter and 13:30 UTC in summer
    assert set(np.unique(minutes[::390]).tolist()) == {13 * 60 + 30, 14 * 60 + 30}
    assert set(np.unique(minutes[389::390] - minutes[::390]).tolist()) == {389}
    assert np.is_busday(local.astype("datetime64[D]")).all()
    assert store.partitions(name)[0].freq == "1min"


def test_rewriting_the_demo_is_a_no_op_and_another_needs_replace(store):
    write_demo(store, symbols=2, start_year=2023, end_year=2023)
    before = _files(store)
    write_demo(store, symbols=2, start_year=2023, end_year=2023)
    assert _files(store) == before
    with pytest.raises(DataError, match=r"differs from the stored DEMO00 bar .*--replace"):
        write_demo(store, symbols=2, start_year=2023, end_year=2023, seed=1)
    write_demo(store, symbols=2, start_year=2023, end_year=2023, seed=1, replace=True)
    assert _files(store) != before
    with pytest.raises(DataError, match="the store already holds DEMO00 with 1d bars; pass --replace"):
        write_demo(store, symbols=2, freq="1min", start_year=2023, days=2)
    write_demo(store, symbols=1, freq="1min", start_year=2023, days=2, replace=True)
    assert [s.freq for s in store.summary()] == ["1min", "1d"]  # DEMO00 rewritten whole, DEMO01 untouched


def test_bad_demo_arguments(store):
    with pytest.raises(DataError, match="demo bars are 1d or intraday"):
        write_demo(store, symbols=1, freq="1w")
    with pytest.raises(DataError, match="--to 2010 is before --from 2015"):
        write_demo(store, symbols=1, end_year=2010)
    with pytest.raises(DataError, match="--symbols must be between 1 and 1000"):
        write_demo(store, symbols=0)

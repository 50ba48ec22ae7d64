"""Data-store benchmarks: CSV import throughput and reading one symbol's 10 years of minute bars.

    python benchmarks/bench_data.py                 # defaults: 2 M-row CSV, 10 y of 1-minute bars
    python benchmarks/bench_data.py --rows 500000 --repeat 3

Targets: CSV import >= 50 MB/s; reading ~1 M minute bars (resolve + read_bars) <= 0.1 s.
Files go to benchmarks/.work/data (git-ignored) unless --work is given; --keep leaves them there.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from backtest.data import Store, read_bars
from backtest.data.demo import write_demo
from backtest.engine import bars as _bars  # noqa: F401  (numba loads here, not inside the first timed read)


def make_minute_csv(path: Path, rows: int, seed: int = 0) -> None:
    """A vendor-like CSV of minute bars: Date (ISO, naive NY time), Open, High, Low, Close, Volume."""
    rng = np.random.default_rng(seed)
    days = np.arange(np.datetime64("2010-01-04"), np.datetime64("2010-01-04") + rows // 390 * 2 + 10)
    days = days[np.is_busday(days)][: -(-rows // 390)]
    ts = (days.astype("datetime64[m]")[:, None] + np.timedelta64(570, "m") + np.arange(390)).ravel()[:rows]
    close = np.round(100 * np.exp(np.cumsum(rng.normal(0, 0.0005, rows))), 2)
    open_ = np.round(close * np.exp(rng.normal(0, 0.0002, rows)), 2)
    table = pa.table({"Date": pa.array(ts.astype("datetime64[s]")), "Open": open_,
                      "High": np.round(np.maximum(open_, close) + rng.uniform(0, 0.05, rows), 2),
                      "Low": np.round(np.minimum(open_, close) - rng.uniform(0, 0.05, rows), 2), "Close": close,
                      "Volume": rng.integers(100, 50_000, rows)})
    pcsv.write_csv(table, path, pcsv.WriteOptions(quoting_style="none"))


def bench_import(work: Path, rows: int, repeat: int) -> float:
    csv = work / "SPY_1min.csv"
    make_minute_csv(csv, rows)
    size = csv.stat().st_size
    times, cpu = [], []
    for k in range(repeat):
        store = Store(work / f"import-{k}")
        t0, c0 = time.perf_counter(), time.process_time()
        [report] = store.import_files([csv], tz="America/New_York")
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        assert report.rows == rows
        shutil.rmtree(store.root)
    best = min(times)
    print(f"import CSV   {size / 1e6:7.1f} MB, {rows:,} minute bars, 1 file: best {best:.2f} s of {repeat}  "
          f"-> {size / 1e6 / best:6.1f} MB/s (median {size / 1e6 / statistics.median(times):.1f} MB/s, "
          f"CPU {min(cpu):.2f} s; target >= 50 MB/s)")
    return size / 1e6 / best


def bench_trades(work: Path, rows: int) -> None:
    """Trades → 1-minute bars through DuckDB (not a target; for the record)."""
    rng = np.random.default_rng(1)
    ms = np.sort(rng.integers(0, 20 * 86_400_000, rows)) + 1_577_836_800_000
    path = work / "ES_trades.csv"
    pcsv.write_csv(pa.table({"time": pa.array(ms, pa.timestamp("ms")),
                             "price": np.round(100 + np.cumsum(rng.normal(0, 0.01, rows)), 2),
                             "size": rng.integers(1, 500, rows)}), path)
    store = Store(work / "trades")
    t0 = time.perf_counter()
    [report] = store.import_files([path], bars="1min")
    took = time.perf_counter() - t0
    size = path.stat().st_size
    print(f"import trades {size / 1e6:6.1f} MB, {rows:,} trades -> {report.rows:,} 1-minute bars: {took:.2f} s "
          f"-> {size / 1e6 / took:6.1f} MB/s")


def bench_read(work: Path, repeat: int) -> float:
    store = Store(work / "read")
    t0 = time.perf_counter()
    [sym] = write_demo(store, symbols=1, freq="1min", start_year=2015, end_year=2024)
    wrote = time.perf_counter() - t0
    parts = store.partitions(sym)
    rows = sum(p.rows for p in parts)
    start, end = parts[0].first_ts, parts[-1].last_ts
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        found = store.resolve(sym, start, end, 200)
        bars = read_bars(sym, [(store.path(p), p.sha256) for p in found], start, end, 200)
        times.append(time.perf_counter() - t0)
        assert len(bars) == rows
    size = sum(p.size for p in parts)
    best = min(times)
    print(f"read bars    {rows:,} minute bars of {sym} (10 years, {len(parts)} files, {size / 1e6:.1f} MB): "
          f"best {best * 1000:.1f} ms, median {statistics.median(times) * 1000:.1f} ms, first {times[0] * 1000:.1f} ms "
          f"of {repeat} (target <= 100 ms; demo written in {wrote:.1f} s)")
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000, help="minute bars in the CSV to import")
    ap.add_argument("--repeat", type=int, default=5, help="repetitions (the best is reported)")
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / ".work" / "data")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args(argv)
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    try:
        speed = bench_import(args.work, args.rows, max(1, args.repeat // 2))
        read_s = bench_read(args.work, args.repeat)
        bench_trades(args.work, args.rows)
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    ok = speed >= 50 and read_s <= 0.1
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

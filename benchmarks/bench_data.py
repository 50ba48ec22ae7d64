"""Data-store benchmarks: CSV import throughput and reading one symbol's 10 years of minute bars.

    python benchmarks/bench_data.py                 # defaults: 2 M-row CSV, 10 y of 1-minute bars
    python benchmarks/bench_data.py --rows 500000 --repeat 3
    python benchmarks/bench_data.py --only store    # one year of minute bars: object store cold vs local cache
    python benchmarks/bench_data.py --only store --store s3://bucket/prefix   # a real store (else moto's server)
    python benchmarks/bench_data.py --only remote   # the shared result cache: a grid fetched vs computed

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
from typing import Any

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


def moto_bucket() -> tuple[Any, str]:
    """moto's S3 server on loopback (pip install 'moto[server]') and the URI of a fresh bucket on it
    (the environment gets made-up keys)."""
    import os
    import re
    import subprocess
    import uuid

    import pyarrow.fs as pafs

    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert server.stdout is not None
    port = next(m.group(1) for m in map(re.compile(r"Running on http://127.0.0.1:(\d+)").search, server.stdout) if m)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_EC2_METADATA_DISABLED="true")
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    fs = pafs.S3FileSystem(endpoint_override=f"http://127.0.0.1:{port}", region="us-east-1", allow_bucket_creation=True)
    fs.create_dir(bucket)
    return server, f"s3://{bucket}/bench?endpoint_override=http://127.0.0.1:{port}"


def _stop(server: Any) -> None:
    if server is not None:
        server.terminate()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()


def bench_remote(work: Path, repeat: int, uri: str | None) -> None:
    """The shared result cache: a daily grid on the demo (20 symbols) computed by one data root
    and uploaded, then run by fresh data roots that fetch every result, against fresh roots that
    compute it all without a cache. Each run is a ``bt run`` process."""
    import json
    import os
    import subprocess

    server = None
    if uri is None:
        server, uri = moto_bucket()
    strategy = Path(__file__).resolve().parents[1] / "strategies" / "sma_cross.py"
    grid = ["--from", "2020", "--to", "2024", "--param", "fast=2:60:2", "--param", "slow=65:300:5"]

    def run(root: Path, *extra: str) -> tuple[float, dict[str, Any]]:
        if not (root / "manifest.json").exists():
            subprocess.run([sys.executable, "-m", "backtest", "--data", str(root), "data", "demo"], check=True,
                           capture_output=True)
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "backtest", "--data", str(root), "run", str(strategy), *grid,
                              "--json", "--yes", *extra], check=True, capture_output=True, text=True,
                             env={**os.environ, "BT_REMOTE_CACHE": ""})
        return time.perf_counter() - t0, json.loads(out.stdout.strip().splitlines()[-1])

    try:
        first, got = run(work / "remote-first", "--remote-cache", uri)
        tasks = got["tasks"]
        print(f"remote cache: first run {tasks:,} tasks computed and {got['remote_cache']['uploaded']} packs "
              f"({got['remote_cache']['uploaded_bytes'] / 1e6:.1f} MB) uploaded in {first:.2f} s")
        fetched, computed = [], []
        for i in range(repeat):
            t, got = run(work / f"remote-fetch-{i}", "--remote-cache", uri)
            assert got["computed"] == 0 and got["remote_cache"]["fetched"] == tasks, got
            fetched.append(t)
            t, got = run(work / f"remote-none-{i}")
            assert got["computed"] == tasks, got
            computed.append(t)
        print(f"remote cache: a fresh data root fetching all {tasks:,} results best {min(fetched):.2f} s, median "
              f"{statistics.median(fetched):.2f} s; computing them without the cache best {min(computed):.2f} s, "
              f"median {statistics.median(computed):.2f} s (fetch/compute {min(fetched) / min(computed):.2f}x, "
              f"{repeat} of each, {uri.split('?')[0]})")
    finally:
        _stop(server)


def bench_store(work: Path, repeat: int, uri: str | None) -> None:
    """One year of minute bars (98 280, one partition) read by a run's way: fetched from the object
    store into an empty bars cache and read (cold), then read from the local cache (warm)."""

    from backtest.data import bars_cache

    server = None
    if uri is None:
        server, uri = moto_bucket()
    try:
        store = Store(work / "store-writer", uri=uri)
        [sym] = write_demo(store, symbols=1, freq="1min", start_year=2023, days=252)
        [part] = store.partitions(sym)
        cold, warm = [], []
        for i in range(repeat):
            reader = Store(work / f"store-reader-{i}", uri=uri)  # an empty data root: nothing cached
            cache = bars_cache.folder(reader.root)
            t0 = time.perf_counter()
            [p] = reader.partitions(sym)
            reader.fetch([(p.path, p.sha256)])
            bars = read_bars(sym, [(reader.root / p.path, p.sha256)], p.first_ts, p.last_ts, 0, cache)
            cold.append(time.perf_counter() - t0)
            assert len(bars) == part.rows
            t0 = time.perf_counter()
            bars = read_bars(sym, [(reader.root / p.path, p.sha256)], p.first_ts, p.last_ts, 0, cache)
            warm.append(time.perf_counter() - t0)
        mb = part.rows * bars_cache.ROW_BYTES / 1e6
        print(f"store read   {part.rows:,} minute bars of {sym} (1 year, one {part.size / 1e6:.1f} MB object) from "
              f"{store.where.split('?')[0]}: cold (manifest, fetch, verify, decode, copy) best "
              f"{min(cold) * 1000:.0f} ms = {mb / min(cold):.0f} MB/s of bars, median "
              f"{statistics.median(cold) * 1000:.0f} ms; from the local cache best {min(warm) * 1000:.1f} ms = "
              f"{mb / min(warm):.0f} MB/s, median {statistics.median(warm) * 1000:.1f} ms (of {repeat})")
    finally:
        _stop(server)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000, help="minute bars in the CSV to import")
    ap.add_argument("--repeat", type=int, default=5, help="repetitions (the best is reported)")
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / ".work" / "data")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--only", choices=["store", "remote"], help="only this benchmark")
    ap.add_argument("--store", help="object store URI for the store benchmark (default: moto's server on loopback)")
    args = ap.parse_args(argv)
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    if args.only is not None:
        try:
            (bench_store if args.only == "store" else bench_remote)(args.work, args.repeat, args.store)
        finally:
            if not args.keep:
                shutil.rmtree(args.work, ignore_errors=True)
        return 0
    try:
        speed = bench_import(args.work, args.rows, max(1, args.repeat // 2))
        read_s = bench_read(args.work, args.repeat)
        bench_trades(args.work, args.rows)
        bench_store(args.work, args.repeat, args.store)
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    ok = speed >= 50 and read_s <= 0.1
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Uncompressed copies of partitions (``backtest.data.bars_cache``): the same bars as Parquet gives,
read without pyarrow, rewritten when damaged, bounded, and removed with their data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datahelpers import make_bars, ns

from backtest.data import Store, bars_cache, read_bars
from backtest.errors import BtError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def five_years(store: Store) -> dict[str, np.ndarray]:
    src = make_bars(1300, start="2018-01-01")  # 2018 .. 2022-12: five partitions
    store.import_arrays("Y", src["ts"], src["open"], src["high"], src["low"], src["close"], src["volume"])
    return src


def _read(store: Store, cache: Path | None, start: str = "2019-03-01", end: str = "2021-06-30", warmup: int = 40):
    parts = store.resolve("Y", ns(start), ns(end), warmup)
    return read_bars("Y", [(store.path(p), p.sha256) for p in parts], ns(start), ns(end), warmup, cache), parts


def _same(a, b) -> None:
    assert (a.start, a.partitions) == (b.start, b.partitions)
    for name in ("ts", "open", "high", "low", "close", "volume"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.flags.c_contiguous and y.flags.c_contiguous
        assert x.tobytes() == y.tobytes(), name


def test_a_read_leaves_copies_and_the_next_read_gives_the_same_bits_without_pyarrow(store, five_years):
    cache = bars_cache.folder(store.root)
    plain, parts = _read(store, None)
    assert not cache.exists()
    first, _ = _read(store, cache)
    _same(first, plain)
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{p.sha256}.bars" for p in parts)
    for p in parts:  # a copy's columns are what the partition's content hash is computed over
        assert not bars_cache.damaged(cache, p.sha256)
    again, _ = _read(store, cache)
    _same(again, plain)
    # a new process reading from the copies does not import pyarrow at all
    files = [(str(store.path(p)), p.sha256) for p in parts]
    code = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from backtest.data import bars_cache, read_bars\n"
        "bars = read_bars('Y', {files!r}, {start}, {end}, 40, Path({cache!r}))\n"
        "print(json.dumps(['pyarrow' in sys.modules, float(bars.close.sum())]))\n"
    ).format(files=files, start=ns("2019-03-01"), end=ns("2021-06-30"), cache=str(cache))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [False, float(plain.close.sum())]


def test_some_years_from_copies_and_some_from_parquet(store, five_years):
    cache = bars_cache.folder(store.root)
    plain, _ = _read(store, None)
    _read(store, cache, "2019-06-01", "2019-12-31", 0)  # leaves a copy of 2019 only
    assert len(list(cache.iterdir())) == 1
    mixed, parts = _read(store, cache)  # 2019 from its copy, 2020 and 2021 from Parquet
    _same(mixed, plain)
    assert len(list(cache.iterdir())) == len(parts)


def test_a_damaged_copy_is_ignored_rewritten_and_reported_by_verify(store, five_years):
    cache = bars_cache.folder(store.root)
    plain, parts = _read(store, cache)
    victim = bars_cache.path(cache, parts[1].sha256)
    whole = victim.read_bytes()
    victim.write_bytes(whole[:-8])  # cut short: the size no longer matches the header
    _same(_read(store, cache)[0], plain)
    assert victim.read_bytes() == whole  # written again from Parquet
    other = bars_cache.path(cache, parts[2].sha256)
    other.write_bytes(bars_cache.path(cache, parts[0].sha256).read_bytes())  # another partition's copy
    _same(_read(store, cache)[0], plain)
    assert not bars_cache.damaged(cache, parts[2].sha256)
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0x10  # a flipped bit that the header cannot see
    victim.write_bytes(bytes(data))
    problems = store.verify()
    assert len(problems) == 1 and "year=2020.parquet: its uncompressed copy" in problems[0]
    assert not victim.exists()  # deleted; the next read makes it again
    _same(_read(store, cache)[0], plain)
    assert store.verify() == []


def test_the_bound_evicts_the_copies_read_longest_ago(store, five_years, monkeypatch):
    cache = bars_cache.folder(store.root)
    for year in (2018, 2019, 2020):
        _read(store, cache, f"{year}-03-01", f"{year}-11-30", 0)
    sizes = sorted(p.stat().st_size for p in cache.iterdir())
    assert len(sizes) == 3
    oldest = sorted(cache.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    os.utime(oldest[0], ns=(10**9, 10**9))  # read longest ago
    os.utime(oldest[1], ns=(2 * 10**9, 2 * 10**9))
    _read(store, cache, "2019-03-01", "2019-11-30", 0)  # a read marks its copy as read now
    assert bars_cache.path(cache, store.resolve("Y", ns("2019-03-01"), ns("2019-11-30"), 0)[0].sha256
                           ).stat().st_mtime_ns > 2 * 10**9
    # room for three copies: keeping a fourth evicts the one read longest ago
    monkeypatch.setattr(bars_cache, "limit_bytes", lambda: sum(sizes) + 100)
    _read(store, cache, "2021-03-01", "2021-11-30", 0)
    left = sorted(p.name for p in cache.iterdir())
    assert len(left) == 3 and oldest[0].name not in left


def test_a_bound_of_zero_keeps_no_copies_and_a_bad_bound_is_refused(store, five_years, monkeypatch):
    cache = bars_cache.folder(store.root)
    monkeypatch.setenv(bars_cache.CACHE_ENV, "0")
    plain, _ = _read(store, None)
    _same(_read(store, cache)[0], plain)
    assert not cache.exists()
    for bad in ("x", "-1", "1.5"):
        monkeypatch.setenv(bars_cache.CACHE_ENV, bad)
        with pytest.raises(BtError, match=rf"BT_BARS_CACHE_MB='{bad}': give the bound of the bars cache in MB"):
            bars_cache.limit_bytes()


def test_removing_a_symbol_removes_its_copies(store, five_years):
    cache = bars_cache.folder(store.root)
    src = make_bars(30, start="2020-01-01", seed=3)
    store.import_arrays("Z", src["ts"], src["open"], src["high"], src["low"], src["close"], src["volume"])
    _read(store, cache)
    z = store.partitions("Z")
    read_bars("Z", [(store.path(p), p.sha256) for p in z], ns("2020-01-01"), ns("2020-12-31"), 0, cache)
    before = {p.name for p in cache.iterdir()}
    store.remove("Y")
    assert {p.name for p in cache.iterdir()} == {f"{p.sha256}.bars" for p in z} and len(before) == 4


def test_bt_run_refuses_a_bad_bound_in_one_line(tmp_path):
    from backtest.catalog import Catalog

    root = tmp_path / "root"
    env = {**os.environ, "BT_DATA": str(root)}
    demo = subprocess.run([sys.executable, "-m", "backtest", "data", "demo"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert demo.returncode == 0, demo.stderr
    done = subprocess.run([sys.executable, "-m", "backtest", "run", str(ROOT / "strategies" / "sma_cross.py")],
                          env={**env, bars_cache.CACHE_ENV: "lots"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: BT_BARS_CACHE_MB='lots': give the bound of the bars cache in MB, a whole "
                                   "number (0 keeps no copies; default 2048)")
    assert Catalog(root / "catalog.duckdb").runs() == []


def test_pins_are_one_file_a_process_and_hold_only_while_locked(tmp_path: Path) -> None:
    """Eviction passes over pinned partitions while the pin's lock is held, one pin file serves every
    call of a process (no file descriptor a call), and a pin whose process is gone is deleted."""
    cache = tmp_path / "bars"
    cache.mkdir()
    names = [f"{i:064x}" for i in range(6)]
    for n in names:
        (cache / f"{n}.parquet").write_bytes(b"x" * 1000)
    for n in names[:3]:
        bars_cache.pin(cache, [n])
    assert len(list((cache / "pins").iterdir())) == 1  # one file however many calls
    bars_cache._evict(cache, 0, keep="")
    assert sorted(p.stem for p in cache.glob("*.parquet")) == names[:3]
    bars_cache.release_pins()
    assert not list((cache / "pins").iterdir())
    # a pin left by a process that ended: its lock is free, so it is deleted and protects nothing
    code = ("import sys; from pathlib import Path; from backtest.data import bars_cache; "
            f"bars_cache.pin(Path({str(cache)!r}), {names[:1]!r}); import os; os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert len(list((cache / "pins").iterdir())) == 1
    bars_cache._evict(cache, 0, keep="")
    assert not list(cache.glob("*.parquet")) and not list((cache / "pins").iterdir())

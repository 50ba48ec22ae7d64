"""What every engine in the benchmark shares: the synthetic data, the workloads, the answer files.

This module imports only numpy and the standard library, because it is imported both by the
harness (bt's environment) and by the peer scripts (the peers' own venv, benchmarks/.peers/).

Data
    ``generate(spec)`` returns the arrays (a pure function of the spec and its seed);
    ``ensure_data(spec)`` writes them once to ``benchmarks/.work/<name>.npz`` and every engine reads
    that file, so all engines see the same bits. Phase 2 imports the same arrays into bt's store::

        data = load_data(ensure_data(MINUTE))
        for i in range(len(data.symbols)):
            store.import_arrays(*data.arrays(i))

Workloads (both are the long-only SMA cross of docs/engine.md's semantics, the one strategy all three engines can
express identically; see README.md for the full semantics)
    ``sma_grid``: MINUTE (20 symbols x 98 280 one-minute bars) x SMA_GRID (90 combos).
    ``small``:    DAILY (40 symbols x 2 520 daily bars = 10 years) x SMALL_GRID (10 combos)
                  = 400 small backtests.

Answers
    One JSON file per engine run: ``{"engine", "workload", "tasks": [{"symbol", "fast", "slow",
    "final_equity", "trades", "closed_trades"}], "phases": {...}, "versions": {...}}``.
    ``trades`` counts every entry that was filled, including a position still open at the end
    (vectorbt's "Total Trades"); ``closed_trades`` only round trips that were closed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / ".work"
PEERS_VENV = BENCH_DIR / ".peers"

NS_PER_MIN = 60 * 1_000_000_000
NS_PER_DAY = 24 * 60 * NS_PER_MIN

# Execution settings of every workload (docs/engine.md's terms).
CASH = 100_000.0
COMMISSION = 0.001  # fraction of traded notional, per side
SLIPPAGE = 0.0

# Workload 1: fast 5..50 step 5, slow 20..200 step 20, fast < slow -> 90 combos.
SMA_GRID: tuple[tuple[int, int], ...] = tuple(
    (f, s) for f in range(5, 55, 5) for s in range(20, 220, 20) if f < s
)
# Workload 2: fast in {5, 10, 20, 40, 80} x slow in {100, 200}: a full product with fast < slow
# everywhere (so `--param fast=5,10,20,40,80 --param slow=100,200` plans exactly these), 10 combos.
SMALL_GRID: tuple[tuple[int, int], ...] = tuple(
    (f, s) for f in (5, 10, 20, 40, 80) for s in (100, 200) if f < s
)
assert len(SMA_GRID) == 90 and len(SMALL_GRID) == 10

GENERATOR_VERSION = 2
"""Bump when ``generate`` changes its output; it is part of the data file names."""


@dataclass(frozen=True)
class DataSpec:
    """A deterministic synthetic data set: ``symbols`` series of ``days`` x ``bars_per_day`` bars.

    Prices follow a geometric Brownian motion per symbol (annual volatility and drift drawn per
    symbol from the seed), split into an opening gap (close[t-1] -> open[t]; larger at day
    boundaries for intraday data) and a bar body (open -> close); high and low extend beyond the
    body by half-normal wicks, so ``low <= min(open, close) <= max(open, close) <= high``.
    Timestamps are weekdays (no holiday calendar), UTC int64 ns: intraday bars from 14:30 UTC
    (09:30 New York, ignoring DST) one per ``bar_ns``; daily bars at 00:00 UTC.
    """

    name: str
    symbols: int
    days: int
    bars_per_day: int
    bar_ns: int
    first_day: str  # ISO date; the first weekday on or after it is day 0
    seed: int = 0

    @property
    def bars(self) -> int:
        return self.days * self.bars_per_day

    @property
    def file_name(self) -> str:
        return f"{self.name}-g{GENERATOR_VERSION}-s{self.seed}-{self.symbols}x{self.bars}.npz"


MINUTE = DataSpec("minute", symbols=20, days=252, bars_per_day=390, bar_ns=NS_PER_MIN, first_day="2024-01-02")
DAILY = DataSpec("daily", symbols=40, days=2520, bars_per_day=1, bar_ns=NS_PER_DAY, first_day="2015-01-02")


@dataclass(frozen=True, eq=False)
class SyntheticData:
    """Arrays of one data set. Prices are ``(n_symbols, n_bars)`` float64, ``ts`` is ``(n_bars,)``."""

    symbols: tuple[str, ...]
    bars_per_day: int  # 1 for daily data; annualisation uses 252 * bars_per_day bars a year
    bar_ns: int  # nominal bar length (NS_PER_DAY for daily data)
    ts: np.ndarray  # int64 ns UTC, shared by all symbols
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    def arrays(
        self, i: int
    ) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(symbol, ts, open, high, low, close, volume)`` of symbol ``i``, as Store.import_arrays takes them."""
        return (
            self.symbols[i],
            self.ts.copy(),
            self.open[i].copy(),
            self.high[i].copy(),
            self.low[i].copy(),
            self.close[i].copy(),
            self.volume[i].copy(),
        )

    def digest(self) -> str:
        """sha256 over all arrays' bytes and the symbol names (identifies the data in results)."""
        h = hashlib.sha256()
        h.update(json.dumps([list(self.symbols), self.bars_per_day, self.bar_ns]).encode())
        for a in (self.ts, self.open, self.high, self.low, self.close, self.volume):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


def _weekdays(first_day: str, n: int) -> np.ndarray:
    """The first ``n`` weekdays on or after ``first_day``, as int64 ns at 00:00 UTC."""
    start = np.datetime64(first_day, "D")
    # A generous span of calendar days, then keep Monday..Friday (1970-01-01 was a Thursday).
    days = start + np.arange(n * 7 // 5 + 14)
    dow = (days.astype(np.int64) + 3) % 7  # 0 = Monday
    out = days[dow < 5][:n]
    assert out.shape[0] == n
    return out.astype("datetime64[ns]").astype(np.int64)


def timestamps(spec: DataSpec) -> np.ndarray:
    """Bar timestamps of ``spec`` (int64 ns UTC, sorted, unique)."""
    days = _weekdays(spec.first_day, spec.days)
    if spec.bars_per_day == 1:
        return days
    session_open = (14 * 60 + 30) * NS_PER_MIN
    intraday = session_open + spec.bar_ns * np.arange(spec.bars_per_day, dtype=np.int64)
    return (days[:, None] + intraday[None, :]).reshape(-1)


def generate(spec: DataSpec) -> SyntheticData:
    """The data set of ``spec``: a pure function of the spec (same bits on every machine).

    Every random draw comes from ``np.random.default_rng(SeedSequence([seed, GENERATOR_VERSION,
    symbol index]))`` with numpy's documented, stable PCG64 streams; the arithmetic is elementwise
    (exp, cumsum over float64 in index order), so the result does not depend on threads or SIMD.
    """
    n = spec.bars
    bars_per_year = 252 * spec.bars_per_day
    ts = timestamps(spec)
    shape = (spec.symbols, n)
    o, h, lo, c, v = (np.empty(shape) for _ in range(5))
    day_start = np.zeros(n, dtype=bool)
    day_start[:: spec.bars_per_day] = True
    for i in range(spec.symbols):
        rng = np.random.default_rng(np.random.SeedSequence([spec.seed, GENERATOR_VERSION, i]))
        vol = rng.uniform(0.15, 0.45)  # annual volatility
        drift = rng.uniform(-0.05, 0.15)  # annual log drift
        price0 = float(np.exp(rng.uniform(np.log(20.0), np.log(500.0))))
        sigma = vol / np.sqrt(bars_per_year)
        mu = (drift - 0.5 * vol * vol) / bars_per_year
        # Gap close[t-1] -> open[t]: small within a session; an overnight gap at each session
        # start of intraday data (about a fifth of a day's variance).
        gap_sd = np.where(day_start, sigma * np.sqrt(0.2 * spec.bars_per_day), 0.1 * sigma)
        if spec.bars_per_day == 1:
            gap_sd = np.full(n, 0.3 * sigma)
        gap = rng.standard_normal(n) * gap_sd
        gap[0] = 0.0
        body = mu + sigma * rng.standard_normal(n)
        log_close = np.log(price0) + np.cumsum(gap + body)
        log_open = log_close - body
        wick_up = np.abs(rng.standard_normal(n)) * 0.5 * sigma
        wick_dn = np.abs(rng.standard_normal(n)) * 0.5 * sigma
        o[i] = np.exp(log_open)
        c[i] = np.exp(log_close)
        h[i] = np.maximum(o[i], c[i]) * np.exp(wick_up)
        lo[i] = np.minimum(o[i], c[i]) * np.exp(-wick_dn)
        v[i] = np.round(rng.lognormal(np.log(1_000.0 * spec.bars_per_day**0.5), 0.6, n))
    symbols = tuple(f"S{i:03d}" for i in range(spec.symbols))
    return SyntheticData(symbols, spec.bars_per_day, spec.bar_ns, ts, o, h, lo, c, v)


def _atomic_write(path: Path, write: Any) -> None:
    """Write via a temporary file in the same directory and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_data(data: SyntheticData, path: Path) -> None:
    def write(f: Any) -> None:
        np.savez(
            f,
            symbols=np.array(data.symbols),
            bars_per_day=np.int64(data.bars_per_day),
            bar_ns=np.int64(data.bar_ns),
            ts=data.ts,
            open=data.open,
            high=data.high,
            low=data.low,
            close=data.close,
            volume=data.volume,
        )

    _atomic_write(path, write)


def load_data(path: Path | str) -> SyntheticData:
    with np.load(path) as z:
        return SyntheticData(
            tuple(str(s) for s in z["symbols"]),
            int(z["bars_per_day"]),
            int(z["bar_ns"]),
            z["ts"],
            z["open"],
            z["high"],
            z["low"],
            z["close"],
            z["volume"],
        )


def validate(data: SyntheticData) -> None:
    """Raise ValueError unless the data obeys the bar contract and OHLC ordering."""
    if not (np.all(np.diff(data.ts) > 0) and data.ts.dtype == np.int64):
        raise ValueError("ts must be int64, sorted and unique")
    for name in ("open", "high", "low", "close", "volume"):
        a = getattr(data, name)
        if a.dtype != np.float64 or a.shape != (len(data.symbols), data.ts.shape[0]):
            raise ValueError(
                f"{name}: want float64 {(len(data.symbols), data.ts.shape[0])}, got {a.dtype} {a.shape}"
            )
        if not np.all(np.isfinite(a)) or np.any(a <= 0):
            raise ValueError(f"{name}: values must be finite and positive")
    if np.any(data.high < np.maximum(data.open, data.close)) or np.any(
        data.low > np.minimum(data.open, data.close)
    ):
        raise ValueError("OHLC ordering violated")


def ensure_data(spec: DataSpec, work_dir: Path = WORK_DIR) -> Path:
    """Path of ``spec``'s data file, generating and writing it first if it does not exist yet."""
    path = work_dir / spec.file_name
    if not path.exists():
        data = generate(spec)
        validate(data)
        save_data(data, path)
    return path


# ---------------------------------------------------------------------------------------------
# Answer files

TaskKey = tuple[str, int, int]  # (symbol, fast, slow)


def write_answers(
    path: Path | str, engine: str, workload: str, tasks: list[dict[str, Any]], **extra: Any
) -> None:
    """Write an answer file (floats as JSON numbers: Python's repr round-trips float64 exactly)."""
    doc = {"engine": engine, "workload": workload, "tasks": tasks, **extra}
    body = json.dumps(doc, indent=1, allow_nan=True).encode()
    _atomic_write(Path(path), lambda f: f.write(body))


def read_answers(path: Path | str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def answers_by_key(doc: dict[str, Any]) -> dict[TaskKey, dict[str, Any]]:
    return {(t["symbol"], int(t["fast"]), int(t["slow"])): t for t in doc["tasks"]}

"""Reading bars for the engine: the partitions a run was planned with, checked by hash."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backtest.data.partition import Columns, embedded_hash, open_partition, read_columns
from backtest.errors import DataError

if TYPE_CHECKING:  # backtest.engine loads numba: only when bars are actually read
    from backtest.engine.bars import Bars


def read_bars(symbol: str, files: Sequence[tuple[Path, str]], start_ns: int, end_ns: int,
              warmup_bars: int, cache: Path | None = None) -> Bars:
    """Bars of ``symbol`` from ``files`` ((path, expected sha256) in year order, as from ``Store.resolve``).

    Returns up to ``warmup_bars`` bars before ``start_ns`` and every bar in [start_ns, end_ns];
    ``Bars.start`` is the index of the first bar at or after ``start_ns``. Each file's embedded
    content hash must equal the expected one, else DataError: the data changed since the run was
    planned and results would no longer match their keys.

    With ``cache`` (``bars_cache.folder(root)``), a partition whose uncompressed copy is there is
    read from it, and one read from Parquet leaves a copy there (``backtest.data.bars_cache``).

    Every file's bars are hashed as read and must hash to the expected content hash, so no
    damaged or rewritten byte reaches a result: a copy that fails is deleted and its partition
    read from Parquet instead; a Parquet file that fails stops the read with a DataError naming
    the symbol, the year and the fix. (sha256 of the bars: ~3 ms per 100 000 bars.)
    """
    for _ in files:
        try:
            return _read(symbol, files, start_ns, end_ns, warmup_bars, cache)
        except _DamagedCopy:  # deleted; the partition is read from Parquet and the copy made again
            continue
    return _read(symbol, files, start_ns, end_ns, warmup_bars, None)


class _DamagedCopy(Exception):
    pass


def _bars_hash(cols: Columns, offset: int, n: int) -> str:
    """The content hash of rows ``offset … offset+n`` of ``cols`` (``partition.content_hash`` of
    canonical columns, which is what partitions and copies hold)."""
    import hashlib

    from backtest.data.partition import hash_header

    h = hashlib.sha256(hash_header(n))
    for a in cols.arrays():
        h.update(memoryview(a[offset:offset + n]).cast("B"))  # type: ignore[arg-type]
    return h.hexdigest()


def _read(symbol: str, files: Sequence[tuple[Path, str]], start_ns: int, end_ns: int,
          warmup_bars: int, cache: Path | None) -> Bars:
    import numpy as np

    from backtest.data import bars_cache
    from backtest.engine.bars import Bars

    limit = bars_cache.limit_bytes() if cache is not None else 0
    if not limit:
        cache = None  # no copies are kept: none are read either
    copies: dict[int, Any] = {}  # year index -> an open uncompressed copy
    parquet: dict[int, Any] = {}  # year index -> an open Parquet file
    sizes = []
    try:
        for k, (path, expected) in enumerate(files):
            copy = bars_cache.rows(cache, expected) if cache is not None else None
            if copy is not None:
                copies[k], n = copy
                sizes.append(n)
                continue
            pf = open_partition(Path(path))
            got = embedded_hash(pf)
            if got != expected:
                raise DataError(f"partition {path} of {symbol} changed since this run was planned "
                                f"(content {got[:12] or 'unknown'}, planned {expected[:12]}); run the command "
                                f"again to plan with the current data")
            parquet[k] = pf
            sizes.append(pf.metadata.num_rows)
    except BaseException:
        for fh in copies.values():
            fh.close()
        raise
    offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    total = int(offsets[-1])
    cols = Columns(np.empty(total, np.int64), *(np.empty(total, np.float64) for _ in range(5)))
    try:
        for k, fh in copies.items():
            bars_cache.read_into(fh, sizes[k], cols, offsets[k])
    finally:
        for fh in copies.values():
            fh.close()
    if len(parquet) > 1:  # decoding and copying release the GIL: read files side by side
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(len(parquet), os.cpu_count() or 1, 4)) as pool:
            list(pool.map(lambda k: read_columns(parquet[k], into=cols, offset=offsets[k]), parquet))
    else:
        for k, pf in parquet.items():
            read_columns(pf, into=cols, offset=offsets[k])
    for k, (path, expected) in enumerate(files):
        if _bars_hash(cols, offsets[k], sizes[k]) == expected:
            continue
        if k in copies and cache is not None:
            try:
                bars_cache.path(cache, expected).unlink()
            except OSError:
                pass
            raise _DamagedCopy(expected)
        year = Path(path).stem.removeprefix("year=")
        raise DataError(f"the {symbol} bars of {year} ({path}) do not match their content hash {expected[:12]}: the file "
                        f"was damaged or rewritten; run bt data verify, then import {symbol} again")
    if cache is not None:
        for k in parquet:
            bars_cache.keep(cache, files[k][1], cols, offsets[k], sizes[k], limit)
    ts = cols.ts
    start = int(np.searchsorted(ts, start_ns, side="left"))
    stop = int(np.searchsorted(ts, end_ns, side="right"))
    lo = max(0, start - max(0, int(warmup_bars)))
    stop = max(stop, lo)
    arrays = [a[lo:stop] for a in cols.arrays()]
    if stop - lo < total // 2:  # do not keep a mostly unused buffer alive
        arrays = [a.copy() for a in arrays]
    return Bars(symbol=symbol, ts=arrays[0], open=arrays[1], high=arrays[2], low=arrays[3], close=arrays[4],
                volume=arrays[5], start=start - lo, partitions=tuple(h for _, h in files))


def bar_stats(bars: Bars) -> dict[str, float | str]:
    """A few facts about a series, for `bt data show` (NaN where there is nothing to say)."""
    import numpy as np

    from backtest.data.freq import infer_freq

    n = len(bars)
    ret = np.diff(np.log(bars.close)) if n > 1 else np.zeros(0)
    gaps = np.log(bars.open[1:] / bars.close[:-1]) if n > 1 else np.zeros(1)
    vol = bars.volume
    has_vol = not np.isnan(vol).all()
    return {"freq": infer_freq(bars.ts), "low": float(bars.low.min()), "high": float(bars.high.max()),
            "first_open": float(bars.open[0]), "last_close": float(bars.close[-1]),
            "change": float(bars.close[-1] / bars.open[0] - 1),
            "return_sd": float(ret.std(ddof=1)) if len(ret) > 1 else float("nan"),
            "largest_gap": float(np.expm1(gaps[np.argmax(np.abs(gaps))])),
            "volume_mean": float(np.nanmean(vol)) if has_vol else float("nan"),
            "volume_zero": float((vol == 0).sum())}

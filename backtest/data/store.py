"""The data store: partitions of bars under a root, their manifest, import and lookup."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backtest.data.freq import fmt_ts, format_freq, infer_freq, modal_step, parse_freq, year_of
from backtest.data.manifest import Files, Manifest
from backtest.data.partition import (
    Columns,
    Partition,
    content_hash,
    open_partition,
    read_columns,
    write_partition,
)
from backtest.errors import DataError, did_you_mean

if TYPE_CHECKING:  # numpy (and validation, which needs it) only where bars are handled: planning
    import numpy as np  # from the manifest, as a rerun does, imports neither

    from backtest.data.validate import Frame, Options
    from backtest.engine.bars import Bars

Progress = Callable[[str, int], None]  # (file just done, its size in bytes)


@dataclass(frozen=True)
class ImportReport:
    """What one import did to one symbol."""

    source: str  # the file (or "<SYM> (arrays)")
    symbol: str
    rows: int  # bars in the input, after cleaning
    first_ts: int
    last_ts: int
    freq: str
    added: int  # bars that were not in the store before
    replaced: int  # stored bars replaced or removed (--replace)
    written: tuple[Partition, ...]  # partitions created or changed
    unchanged: int  # partitions the input touched whose content stayed the same
    removed: tuple[int, ...] = ()  # years whose partition --replace emptied
    warnings: tuple[str, ...] = ()


class ImportFailed(DataError):
    """Some files of an import were refused; ``errors`` has one line each, ``reports`` the rest."""

    def __init__(self, errors: list[DataError], reports: list[ImportReport], files: int) -> None:
        self.errors = errors
        self.reports = reports
        super().__init__(f"{len(errors)} of {files} files were not imported (nothing was written for them); "
                         f"fix them and run the same import again")


@dataclass(frozen=True)
class SymbolSummary:
    symbol: str
    first_ts: int
    last_ts: int
    rows: int
    freq: str
    partitions: int
    size: int


#: ``Store(root, uri=CONFIGURED)``: the store ``--store`` / ``BT_STORE`` names, for the data root in use
CONFIGURED = "<configured>"


def configured_uri(root: Path | None) -> str | None:
    """The object store configured for ``root`` (None: the local store under it). A store URI is
    for the data root of the command (``--data``); another root (a trial run's) is local."""
    from backtest import paths

    uri = paths.store_uri()
    if uri is None or (root is not None and Path(root).resolve() != paths.root()):
        return None
    return uri


class Store:
    """Bars under ``root/bars/symbol=<SYM>/year=<YYYY>.parquet`` with a manifest of content hashes.

    ``Store(root)`` is the store configured for that root: the local one, or, with ``--store`` /
    ``BT_STORE``, an ``objstore.ObjectStore`` (the same interface; ``uri=None`` forces the local one).
    """

    root: Path
    where: str  # how messages name the store (a folder, or a URI without credentials)
    remote = False  # an object store: runs fetch its partitions into the bars cache first

    def __new__(cls, root: Path | None = None, uri: str | None = CONFIGURED) -> Store:
        if cls is Store:
            target = configured_uri(root) if uri == CONFIGURED else uri
            if target:
                from backtest.data.objstore import ObjectStore

                return super().__new__(ObjectStore)
        return super().__new__(cls)

    def __init__(self, root: Path | None = None, uri: str | None = CONFIGURED) -> None:
        from backtest import paths

        self.root = Path(root) if root is not None else paths.root()
        self.where = str(self.root)
        self._files = Files(self.root)
        self._cache: tuple[Any, Manifest] | None = None

    # ---- reading -------------------------------------------------------------------------------
    def _manifest(self) -> Manifest:
        self._files.recover_if_needed()
        try:
            st = os.stat(self._files.manifest)
        except FileNotFoundError:
            return {}
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._cache is None or self._cache[0] != stamp:
            self._cache = (stamp, self._files.read())
        return self._cache[1]

    def symbols(self) -> list[str]:
        return sorted(self._manifest())

    def partitions(self, symbol: str) -> list[Partition]:
        """The symbol's partitions, by year; DataError with a suggestion for an unknown symbol."""
        manifest = self._manifest()
        parts = manifest.get(symbol.strip().upper())
        if not parts:
            if not manifest:
                raise DataError(f'unknown symbol "{symbol}": the data store at {self.where} is empty; '
                                f"import data with `bt data import FILE` or try `bt data demo`")
            hint = did_you_mean(symbol.upper(), list(manifest)) or " `bt data ls` lists the symbols."
            raise DataError(f'unknown symbol "{symbol}".{hint}')
        return list(parts)

    def path(self, p: Partition) -> Path:
        """Where ``p`` is read from here (an object store's partition is fetched first)."""
        return self.root / p.path

    def fetch(self, files: Iterable[tuple[str, str] | list[str]]) -> int:
        """Make the partitions ``files`` ((path, sha256) as planned) readable where workers read
        them; how many were fetched. A local store's files are there already."""
        return 0

    def resolve(self, symbol: str, start_ns: int, end_ns: int, warmup_bars: int) -> list[Partition]:
        """The fewest partitions holding ``warmup_bars`` bars before ``start_ns`` and [start_ns, end_ns].

        DataError when no bar falls in [start_ns, end_ns]. Fewer warm-up bars than asked is not an
        error: the history may simply begin later (``read_bars`` returns what there is).
        """
        parts = self.partitions(symbol)
        hit = [i for i, p in enumerate(parts) if p.last_ts >= start_ns and p.first_ts <= end_ns]
        if hit and not any(start_ns <= parts[i].first_ts <= end_ns or start_ns <= parts[i].last_ts <= end_ns
                           for i in hit):
            import numpy as np

            ts = self._ts(parts[hit[0]])  # the range lies inside one partition: look at its bars
            if np.searchsorted(ts, start_ns, "left") == np.searchsorted(ts, end_ns, "right"):
                hit = []
        if not hit:
            sym = parts[0].symbol
            raise DataError(f"no bars for {sym} from {fmt_ts(start_ns)} to {fmt_ts(end_ns)}; the store has {sym} "
                            f"from {fmt_ts(parts[0].first_ts)} to {fmt_ts(parts[-1].last_ts)}")
        first, last = hit[0], hit[-1]
        p = parts[first]
        before = 0 if start_ns <= p.first_ts else int(self._ts(p).searchsorted(start_ns, "left"))
        while before < warmup_bars and first > 0:
            first -= 1
            before += parts[first].rows
        return parts[first:last + 1]

    def short_spans(self, symbols: Iterable[str], start_ns: int, end_ns: int,
                    slack_ns: int = 7 * 86_400_000_000_000) -> dict[str, tuple[int, int]]:
        """The symbols whose bars cover only part of [start_ns, end_ns] (starting or ending more
        than ``slack_ns`` inside it), with the span they do cover (first, last bar in the range,
        from the manifest). An open end (0 or 2**63 - 1) is never short."""
        out = {}
        for sym in symbols:
            try:
                parts = [p for p in self.partitions(sym) if p.last_ts >= start_ns and p.first_ts <= end_ns]
            except DataError:
                continue
            if not parts:
                continue
            first, last = max(parts[0].first_ts, start_ns), min(parts[-1].last_ts, end_ns)
            late = start_ns > 0 and first - start_ns > slack_ns
            early = end_ns < 2**63 - 1 and end_ns - last > slack_ns
            if late or early:
                out[sym] = (first, last)
        return out

    def _ts(self, p: Partition) -> np.ndarray:
        import numpy as np
        import pyarrow as pa

        table = open_partition(self.path(p)).read(columns=["ts"], use_threads=False)
        return np.asarray(table.column("ts").cast(pa.int64()).to_numpy(), dtype=np.int64)

    def read(self, symbol: str, start_ns: int | None = None, end_ns: int | None = None,
             warmup_bars: int = 0) -> Bars:
        """resolve + read_bars in one call (all bars when no range is given)."""
        from backtest.data.reader import read_bars

        parts = self.partitions(symbol)
        start_ns = parts[0].first_ts if start_ns is None else start_ns
        end_ns = parts[-1].last_ts if end_ns is None else end_ns
        found = self.resolve(symbol, start_ns, end_ns, warmup_bars)
        return read_bars(parts[0].symbol, [(self.path(p), p.sha256) for p in found], start_ns, end_ns, warmup_bars)

    def summary(self) -> list[SymbolSummary]:
        """One line per symbol, for `bt data ls`."""
        out = []
        for sym, parts in sorted(self._manifest().items()):
            out.append(SymbolSummary(sym, parts[0].first_ts, parts[-1].last_ts, sum(p.rows for p in parts),
                                     symbol_freq(parts), len(parts), sum(p.size for p in parts)))
        return out

    def verify(self, symbol: str | None = None) -> list[str]:
        """Recompute every partition's content hash; the problems found (empty when all is well)."""
        from backtest.data import bars_cache
        from backtest.data.partition import file_content_hash

        problems = []
        copies = bars_cache.folder(self.root)
        for sym in [symbol] if symbol else self.symbols():
            for p in self.partitions(sym):
                if bars_cache.damaged(copies, p.sha256):
                    problems.append(f"{p.path}: its uncompressed copy in {copies} was "
                                    "damaged; deleted (the next run that reads it makes it again)")
                try:
                    got = file_content_hash(self.path(p))
                except DataError as exc:
                    problems.append(str(exc))
                    continue
                if got != p.sha256:
                    problems.append(f"{p.path}: content hash {got[:12]} differs from the manifest's {p.sha256[:12]}")
        return problems

    def changed(self, symbols: Iterable[str], files: Iterable[tuple[str, str]]) -> list[str]:
        """Which of ``files`` ((path relative to the root, content hash), as a run of ``symbols``
        read them) the store no longer holds as they were: one line each, empty when all are."""
        now: dict[str, str] = {}
        files = sorted(set(files))
        for symbol in sorted(set(symbols)):
            try:
                now.update({p.path: p.sha256 for p in self.partitions(symbol)})
            except DataError:
                pass  # the symbol was removed: all its partitions are missing below
        out = []
        for path, sha in files:
            if path not in now:
                out.append(f"{path}: removed from the data store")
            elif now[path] != sha:
                out.append(f"{path}: re-imported with other bars (content {now[path][:12]}, the run read {sha[:12]})")
        return out

    # ---- writing -------------------------------------------------------------------------------
    def import_arrays(self, symbol: str, ts: Any, open: Any, high: Any, low: Any, close: Any, volume: Any = None,
                      *, replace: bool = False, dedupe: bool = False, dropna: bool = False,
                      repair: bool = False) -> ImportReport:
        """Import bars given as arrays (int64 ns UTC ``ts``), with the same checks as a file."""
        from backtest.data.validate import Options, frame_from_arrays

        opts = Options(replace=replace, dedupe=dedupe, dropna=dropna, repair=repair)
        frame = frame_from_arrays(symbol, ts, open, high, low, close, volume, opts)
        return self._commit([frame], opts)[0]

    def import_files(self, paths: Iterable[Path | str], *, symbol: str | None = None, tz: str | None = None,
                     date_format: str | None = None, adjust: bool = False, bars: str | None = None, dedupe: bool = False, dropna: bool = False,
                     replace: bool = False, repair: bool = False,
                     progress: Progress | None = None) -> list[ImportReport]:
        """Import CSV / gzip CSV / Parquet files (directories: every data file in them).

        Each file is checked whole before anything of it is written, and committed at once. A bad
        file does not stop the others: with one file its error is raised, with several an
        ``ImportFailed`` lists them all after the good ones are in.
        """
        from backtest.data.freq import parse_freq
        from backtest.data.sources import expand
        from backtest.data.timestamps import check_tz
        from backtest.data.validate import Options

        opts = Options(symbol=symbol, tz=tz, date_format=date_format, adjust=adjust, bars=bars, dedupe=dedupe, dropna=dropna,
                       replace=replace, repair=repair)
        if tz:
            check_tz(tz)
        if date_format is not None:
            from backtest.data.timestamps import check_date_format

            check_date_format(date_format)
        if bars:
            parse_freq(bars)
        if symbol:
            from backtest.data.validate import check_symbol

            check_symbol(symbol)
        files = expand([Path(p) for p in paths])
        reports: list[ImportReport] = []
        errors: list[DataError] = []
        for f in files:
            try:
                reports += self._commit(read_file(f, opts), opts)
            except DataError as exc:
                errors.append(exc)
            if progress is not None:
                progress(str(f), f.stat().st_size if f.exists() else 0)
        if errors:
            if len(files) == 1:
                raise errors[0]
            raise ImportFailed(errors, reports, len(files))
        return reports

    def remove(self, symbol: str) -> None:
        """Delete a symbol's partitions and its manifest entry (all at once)."""
        parts = self.partitions(symbol)
        sym = parts[0].symbol
        with self._files.locked():
            manifest = self._files.read()
            if sym not in manifest:
                return  # removed meanwhile by another process
            writes: dict[str, str | None] = {p.path: None for p in manifest[sym]}
            rest = {s: ps for s, ps in manifest.items() if s != sym}
            self._files.commit(writes, rest)
        d = self.root / "bars" / f"symbol={sym}"
        if d.exists() and not any(d.iterdir()):
            d.rmdir()
        from backtest.data import bars_cache

        bars_cache.drop(self.root, [p.sha256 for p in parts])
        self._cache = None

    def _commit(self, frames: Sequence[Frame], opts: Options) -> list[ImportReport]:
        """Merge frames with what is stored and commit every changed partition at once."""
        with self._files.locked():
            manifest = self._files.read()
            new_manifest = dict(manifest)
            staged: dict[str, str | None] = {}
            reports = []
            for frame in frames:
                report, parts, writes = self._merge(frame, new_manifest.get(frame.symbol, []), opts)
                reports.append(report)
                if writes:
                    new_manifest[frame.symbol] = parts
                    staged.update(writes)
            if staged:
                self._files.commit(staged, new_manifest)
        self._cache = None
        return reports

    def _stage_dir(self) -> Path:
        return self._files.stage_dir()

    def _merge(self, frame: Frame, old_parts: list[Partition], opts: Options
               ) -> tuple[ImportReport, list[Partition], dict[str, str | None]]:
        import numpy as np

        cols, sym = frame.cols, frame.symbol
        old = {p.year: p for p in old_parts}
        step = modal_step(cols.ts[:200_000])  # a prefix tells the frequency as well as the whole
        stored_freq = symbol_freq(old_parts)
        stored_step = parse_freq(stored_freq) if stored_freq else 0
        # A sparse patch (every other day) is fine; minute bars into a daily series are not.
        if step and stored_step and len(cols) >= 3 and max(step, stored_step) >= 4 * min(step, stored_step):
            raise DataError(f"{frame.label}: {sym} holds {stored_freq} bars and this file has {format_freq(step)} "
                            f"bars; import it under another symbol (--symbol {sym}_{format_freq(step).upper()}) "
                            f"or remove the old data first (bt data rm {sym})")
        freq = stored_freq or format_freq(step)
        first_year, last_year = (int(y) for y in year_of(cols.ts[[0, -1]]))
        starts = np.array([f"{y}-01-01" for y in range(first_year, last_year + 2)], dtype="datetime64[ns]")
        bounds = np.searchsorted(cols.ts, starts.astype(np.int64))  # year y: rows bounds[y - first_year] to the next
        first_ts, last_ts = int(cols.ts[0]), int(cols.ts[-1])
        touched = {first_year + k for k in range(len(starts) - 1) if bounds[k + 1] > bounds[k]}
        if opts.replace:
            touched |= {y for y, p in old.items() if p.last_ts >= first_ts and p.first_ts <= last_ts}
        parts = dict(old)
        writes: dict[str, str | None] = {}
        removed: list[int] = []
        pending: list[tuple[int, str, Columns]] = []
        added = replaced = 0
        for year in sorted(touched):
            if first_year <= year <= last_year:
                lo, hi = int(bounds[year - first_year]), int(bounds[year - first_year + 1])
            else:  # pragma: no cover - a stored year touched by --replace lies inside the new span
                lo = hi = 0
            seg = cols.take(slice(lo, hi))
            if year in old:
                stored = read_columns(open_partition(self.path(old[year])))
                merged, n_added, n_replaced = _merge_year(stored, seg, frame, lo, opts.replace,
                                                          first_ts, last_ts)
            else:
                merged, n_added, n_replaced = seg, len(seg), 0
            added += n_added
            replaced += n_replaced
            rel = f"bars/symbol={sym}/year={year}.parquet"
            if len(merged) == 0:
                writes[rel] = None
                del parts[year]
                removed.append(year)
            else:
                pending.append((year, rel, merged))
        # Hashing, encoding and fsync release the GIL: the years of a symbol are written side by side.
        with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
            hashes = list(pool.map(lambda item: content_hash(item[2]), pending))
            todo = [(y, rel, m, h) for (y, rel, m), h in zip(pending, hashes, strict=True)
                    if not (y in old and h == old[y].sha256)]
            unchanged = len(pending) - len(todo)
            stage = self._stage_dir()

            def write(item: tuple[int, str, Columns, str]) -> Partition:
                year, rel, merged, sha = item
                p = Partition(sym, year, sha, len(merged), int(merged.ts[0]), int(merged.ts[-1]),
                              infer_freq(merged.ts) or freq, rel)
                size = write_partition(stage / f"{sym}-{year}.parquet", merged,
                                       {"sha256": sha, "symbol": sym, "year": str(year), "rows": str(p.rows),
                                        "first_ts": str(p.first_ts), "last_ts": str(p.last_ts), "freq": p.freq,
                                        "format": "1"})
                return Partition(**{**p.__dict__, "size": size})

            written = list(pool.map(write, todo))
        for p in written:
            parts[p.year] = p
            writes[p.path] = f"{sym}-{p.year}.parquet"
        report = ImportReport(frame.label, sym, len(cols), first_ts, last_ts, freq, added, replaced,
                              tuple(written), unchanged, tuple(removed), tuple(frame.warnings))
        return report, sorted(parts.values(), key=lambda p: p.year), writes


def _merge_year(stored: Columns, seg: Columns, frame: Frame, seg_offset: int, replace: bool,
                first_ts: int, last_ts: int) -> tuple[Columns, int, int]:
    """Stored bars of one year + new ones → (merged, bars added, stored bars replaced)."""
    import numpy as np

    idx = np.searchsorted(stored.ts, seg.ts)
    safe = np.minimum(idx, max(len(stored) - 1, 0))
    known = (idx < len(stored)) & (stored.ts[safe] == seg.ts) if len(stored) else np.zeros(len(seg), bool)
    if replace:
        outside = (stored.ts < first_ts) | (stored.ts > last_ts)
        kept = stored.take(outside)
        merged = Columns.concat([kept, seg])
        n_replaced = int((~outside).sum())
    else:
        same = np.ones(int(known.sum()), dtype=bool)
        old_rows = stored.take(safe[known])
        new_rows = seg.take(known)
        for name in ("open", "high", "low", "close", "volume"):
            a, b = getattr(old_rows, name), getattr(new_rows, name)
            same &= (a == b) | (np.isnan(a) & np.isnan(b))
        if not same.all():
            j = int(np.argmax(~same))
            i = int(np.flatnonzero(known)[j])
            name = next(n for n in ("open", "high", "low", "close", "volume")
                        if not (getattr(old_rows, n)[j] == getattr(new_rows, n)[j]))
            extra = int((~same).sum()) - 1
            more = f" (and {extra} more)" if extra else ""
            raise DataError(f"{frame.where(seg_offset + i)}: the bar at {fmt_ts(int(seg.ts[i]))} differs from the "
                            f"stored {frame.symbol} bar ({name} {getattr(new_rows, name)[j]:.10g} here, "
                            f"{getattr(old_rows, name)[j]:.10g} stored){more}; pass --replace to replace the "
                            f"stored bars in this file's time span")
        merged = Columns.concat([stored, seg.take(~known)])
        n_replaced = 0
    order = np.argsort(merged.ts, kind="stable")
    if not np.all(order == np.arange(len(order))):
        merged = merged.take(order)
    return merged, int((~known).sum()), n_replaced


def symbol_freq(parts: Sequence[Partition]) -> str:
    """A symbol's frequency: that of most of its bars."""
    weights: dict[str, int] = {}
    for p in parts:
        if p.freq:
            weights[p.freq] = weights.get(p.freq, 0) + p.rows
    return max(weights, key=lambda f: weights[f]) if weights else ""


def read_file(path: Path, opts: Options) -> list[Frame]:
    """Parse and check one file into validated frames (one per symbol); writes nothing."""
    from backtest.data.sources import Source, find_layout, symbol_from_name
    from backtest.data.ticks import frames_from_ticks
    from backtest.data.validate import frames_from_table

    src = Source(path)
    lay = find_layout(src.names, src.label, ticks=bool(opts.bars), adjust=opts.adjust)
    default = None if "symbol" in lay.fields else (opts.symbol or symbol_from_name(path))
    if opts.bars:
        return frames_from_ticks(src, lay, opts, default)
    return frames_from_table(src.read(lay), src.label, src.unit, src.first, opts, default)

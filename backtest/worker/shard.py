"""A shard spec becomes outcomes: read the bars, run the strategy's grid, encode the results.

A shard spec is a ``backtest.spec.ShardSpec`` (a worker program reads it from its ``shard`` frame
with ``ShardSpec.from_wire``): the partitions to read (``files``, in year order, enough for the
widest warm-up), the settings, the benchmark's partitions (``--benchmark``), and the tasks in
groups by warm-up. A portfolio shard's ``symbol`` is its universe's name and ``members`` says whose
``files`` are whose; its members' bars are read from their own files and aligned on one timeline
(``engine.universe.align``), warm-up counted on that timeline.

Relative paths are resolved under the data root. Each group's tasks see exactly ``warmup`` bars
before the start, so a task's result depends only on what its key names; groups that see the same
slice of the bars (their warm-ups reach back to the same bar) run together and share the
strategy's indicators. Outcomes are frames of ``backtest.worker.protocol`` handed to ``emit``.
"""

from __future__ import annotations

import io
import struct
import sys
import time
import traceback
from array import array
from collections.abc import Callable, Sequence
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import TYPE_CHECKING, Any

Emit = Callable[..., None]

if TYPE_CHECKING:
    from backtest.spec import ShardGroup, ShardSpec
    from backtest.store.packs import Variant


def slice_bars(bars: Any, warmup: int, parts: Sequence[str]) -> Any:
    """The bars (or universe) a group of tasks with ``warmup`` bars of warm-up sees, cut from a
    longer read."""
    from backtest.engine.bars import Bars
    from backtest.engine.universe import Universe

    offset = max(0, bars.start - warmup)
    if isinstance(bars, Universe):
        return bars.sliced(offset, parts)
    if offset == 0 and tuple(parts) == bars.partitions:
        return bars
    return Bars(
        symbol=bars.symbol,
        ts=bars.ts[offset:],
        open=bars.open[offset:],
        high=bars.high[offset:],
        low=bars.low[offset:],
        close=bars.close[offset:],
        volume=bars.volume[offset:],
        start=bars.start - offset,
        partitions=tuple(parts),
    )


def shared_windows(bars: Any) -> Any:
    """The window indicators the slices of one symbol's ``bars`` share (``engine.run.SharedWindows``);
    None for a universe (a portfolio strategy's arrays are its own)."""
    from backtest.engine.bars import Bars
    from backtest.engine.run import SharedWindows

    return SharedWindows(bars) if isinstance(bars, Bars) else None


def split_axes(spec: ShardSpec, settings: Any, tasks: list[tuple[str, dict[str, Any]]]
               ) -> tuple[list[dict[str, Any]], Any]:
    """The strategy's parameters of each ``(key, params)`` task, and the settings to run them
    with: the shard's, or (with settings axes, ``spec.axes``) each task's own."""
    axes = spec.axes
    if not axes:
        return [p for _, p in tasks], settings
    from dataclasses import replace

    from backtest.spec import split_axes as split

    params = []
    each = []
    made: dict[tuple[Any, ...], Any] = {}
    for _, p in tasks:
        strategy_params, values = split(p, axes)
        params.append(strategy_params)
        combo = tuple(values.values())
        if combo not in made:
            made[combo] = replace(settings, **values)
        each.append(made[combo])
    return params, each


def _by_slice(bars: Any, groups: Sequence[ShardGroup]) -> list[tuple[Any, list[tuple[str, dict[str, Any]]]]]:
    """The shard's tasks by the bars they see: groups whose warm-ups reach back to the same bar
    (e.g. every group when the data starts after the range's start minus the warm-up) run as one,
    on one slice, so they share its indicators (window indicators are shared across slices too:
    ``shared_windows``)."""
    merged: dict[int, tuple[Any, list[tuple[str, dict[str, Any]]]]] = {}
    for group in groups:
        offset = max(0, bars.start - group.warmup)
        if offset not in merged:
            merged[offset] = (slice_bars(bars, group.warmup, group.part_hashes), [])
        merged[offset][1].extend(group.tasks)
    return list(merged.values())


#: Characters of a task group's printed output kept for ``bt logs`` (the rest is counted, not kept:
#: a strategy that prints in a loop must not fill the coordinator's memory or its frames).
OUTPUT_LIMIT = 1_000_000


class CappedText(io.TextIOBase):
    """A text stream that keeps the first ``limit`` characters written to it and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parts: list[str] = []
        self._kept = 0
        self.dropped = 0

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        room = self.limit - self._kept
        if room > 0:
            part = s[:room]
            self._parts.append(part)
            self._kept += len(part)
            self.dropped += len(s) - len(part)
        else:
            self.dropped += len(s)
        return len(s)

    def getvalue(self) -> str:
        text = "".join(self._parts)
        if self.dropped:
            text += (f"\n[bt: {self.dropped:,} more characters of output were dropped; the first "
                     f"{self.limit:,} are kept]\n")
        return text


_LITTLE = sys.byteorder == "little"

#: A worker that stores its results writes a pack when it holds this many bytes of results, or
#: has held results for this long: a few packs a shard, and results reported soon after they are made.
PACK_BYTES = 8 << 20
PACK_SECONDS = 2.0


class _Batch:
    """The results a worker computed and has not stored yet, on their way into a pack."""

    def __init__(self, shard: str, results: Path | None, staging: Path | None) -> None:
        from backtest.store.packs import PackWriter, digest

        self._digest = digest
        self.shard = shard
        self.store = results / "results" / "packs" if results else None
        self.folder = staging if staging is not None else self.store
        self.pack = PackWriter() if self.folder is not None else None
        self._reset()

    def _reset(self) -> None:
        self.n_trades: list[int] = []
        self.values: array[float] = array("d")
        self.names: tuple[str, ...] = ()
        self.since = time.monotonic()

    def add(self, parts: tuple[Variant, str, int, str, bytes, bytes], names: tuple[str, ...]) -> None:
        """A result's ``parts`` (``Encoder.parts``: its metrics block little-endian float64, in
        ``names`` order, the same for every task of a shard)."""
        assert self.pack is not None
        variant, key, n, params, values, trades = parts
        self.pack.add(variant, key, n, params, values, trades, self._digest(*parts))
        self.n_trades.append(n)
        self.names = names
        if _LITTLE:
            self.values.frombytes(values)
        else:  # pragma: no cover - a big-endian machine: the frame's block is in native order
            self.values.extend(struct.unpack(f"<{len(names)}d", values))

    def due(self) -> bool:
        return self.pack is not None and (self.pack.size >= PACK_BYTES or
                                          (len(self.pack) > 0 and time.monotonic() - self.since >= PACK_SECONDS))

    def flush(self, emit: Emit) -> None:
        """Write the pack, then report its tasks (a result is stored before it is reported)."""
        from backtest.store.packs import PackWriter

        if self.pack is None or not len(self.pack):
            return
        assert self.folder is not None
        name, written = self.pack.write(self.folder, self.store)
        staged = written and self.folder != self.store
        emit({"t": "results", "shard": self.shard, "keys": "".join(self.pack.keys), "n_trades": self.n_trades,
              "metrics": self.names, "pack": name, **({"staged": True} if staged else {})},
             self.values.tobytes())
        self.pack = PackWriter()
        self._reset()


class Runner:
    """Runs shards in this process; the inline executor uses it directly."""

    def __init__(self, data_root: Path | None, results: Path | None = None, sandbox: Any = None) -> None:
        self.data_root = data_root
        self.sandbox = sandbox  # a worker's ``sandbox.Sandbox``: says which failures it caused
        # uncompressed copies of the partitions read (``backtest.data.bars_cache``)
        from backtest.data.bars_cache import folder

        self.bars_cache = folder(data_root) if data_root is not None else None
        self.results = results  # a results store this worker writes into itself (same machine)
        self.strategies: dict[str, Any] = {}
        from backtest.store.results import environment

        self.env = environment()

    def add_strategy(self, msg: dict[str, Any]) -> None:
        if msg["hash"] in self.strategies:
            return
        from backtest.strategy import load_strategy_source

        self.strategies[msg["hash"]] = load_strategy_source(msg["source"], msg["filename"], msg.get("name") or None,
                                                            msg.get("modules") or {}, msg["hash"])

    def _path(self, p: str) -> Path:
        path = Path(p)
        if path.is_absolute() or self.data_root is None:
            return path
        return self.data_root / path

    def _load(self, spec: ShardSpec) -> tuple[Any, Any, Any, Any]:
        """The strategy class, the settings, the bars (enough for the widest warm-up) and the
        benchmark's bars (or None) of a shard."""
        from backtest.data import read_bars
        from backtest.engine import SimSettings

        cls = self.strategies[spec.strategy_hash]
        settings = SimSettings(**spec.settings)
        bench = None
        if spec.benchmark:
            bench_files = [(self._path(p), h) for p, h in spec.benchmark_files]
            bench = read_bars(spec.benchmark, bench_files, spec.start_ns, spec.end_ns, 1, self.bars_cache)
        files = [(self._path(p), h) for p, h in spec.files]
        max_warmup = spec.max_warmup()
        if not spec.members:
            bars = read_bars(spec.symbol, files, spec.start_ns, spec.end_ns, max_warmup, self.bars_cache)
            return cls, settings, bars, bench
        # a universe: each member's bars from its own files, aligned on the union of their times
        from backtest.engine.universe import align

        members = []
        at = 0
        for symbol, count in spec.members:
            members.append(read_bars(symbol, files[at:at + count], spec.start_ns, spec.end_ns, max_warmup,
                                     self.bars_cache))
            at += count
        widest = max(spec.groups, key=lambda g: g.warmup)
        universe = align(members, spec.start_ns, max_warmup, spec.symbol, widest.part_hashes)
        return cls, settings, universe, bench

    def replay(self, spec: ShardSpec) -> list[tuple[str, Any, Any]]:
        """Run a shard's tasks again in this process, keeping each one's equity curve: one
        ``(key, bars the task saw, TaskOutput | StrategyError)`` per task, in the shard's order.
        The same bars, slices and settings as ``run_shard``, so the same metrics, bit for bit."""
        from backtest.engine import run_grid

        cls, settings, bars, bench = self._load(spec)
        out: list[tuple[str, Any, Any]] = []
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            shared = shared_windows(bars)
            for gbars, tasks in _by_slice(bars, spec.groups):
                params, each = split_axes(spec, settings, tasks)
                outcomes = run_grid(cls, gbars, params, each, want_equity=True, benchmark=bench, shared=shared)
                out.extend((key, gbars, res) for (key, _), res in zip(tasks, outcomes, strict=True))
        return out

    def run_shard(self, spec: ShardSpec, emit: Emit) -> None:
        """Run every task of ``spec``; ``emit(header, body)`` receives its outcomes as they are made.

        A worker that stores results itself (``results``: same machine) gathers them in a pack
        (``store.packs``) and writes it every ``PACK_BYTES`` or ``PACK_SECONDS`` and at the shard's
        end, then reports those tasks with their metrics only (one ``results`` frame); a worker
        that does not (SSH hosts, Dask) sends each result file (``result`` frames)."""
        from backtest.errors import BtError
        from backtest.store.results import Encoder, result_file

        sid = spec.id
        t0 = time.perf_counter()
        try:
            cls, settings, bars, bench = self._load(spec)
        except BtError as exc:
            emit({"t": "shard_error", "shard": sid, "error": str(exc), "details": ""})
            return
        except Exception as exc:
            emit({"t": "shard_error", "shard": sid, "error": f"{type(exc).__name__}: {exc}",
                  "details": traceback.format_exc()})
            return
        from backtest.engine import run_grid

        encode = Encoder(spec.symbol, self.env)
        batch = _Batch(sid, self.results, self.sandbox.staging if self.sandbox is not None else None)
        shared = shared_windows(bars)
        for gbars, tasks in _by_slice(bars, spec.groups):
            keys = [k for k, _ in tasks]
            params, each = split_axes(spec, settings, tasks)
            out = CappedText(OUTPUT_LIMIT)
            with redirect_stdout(out), redirect_stderr(out):
                try:
                    outcomes: list[Any] = run_grid(cls, gbars, params, each, benchmark=bench, shared=shared)
                except Exception as exc:  # the engine itself failed: every task of the group fails
                    outcomes = [exc] * len(keys)
            text = out.getvalue()
            if text:
                emit({"t": "log", "shard": sid, "text": text})
            for key, p, res in zip(keys, params, outcomes, strict=True):
                if isinstance(res, BaseException):
                    details = getattr(res, "details", "") or "".join(
                        traceback.format_exception(type(res), res, res.__traceback__))
                    msg = str(res) if isinstance(res, BtError) else f"{type(res).__name__}: {res}"
                    why = self.sandbox.explain(res) if self.sandbox is not None else None
                    if why:
                        msg = f"{msg.split(': ', 1)[0]}: {why}" if isinstance(res, BtError) else why
                    emit({"t": "task_error", "shard": sid, "key": key, "error": msg, "details": details})
                elif batch.pack is None:
                    emit({"t": "result", "shard": sid, "key": key}, result_file(encode.output_parts(key, p, res)))
                else:
                    batch.add(encode.output_parts(key, p, res), encode.names)
            if batch.due():
                batch.flush(emit)
        batch.flush(emit)
        emit({"t": "shard_done", "shard": sid, "seconds": time.perf_counter() - t0})

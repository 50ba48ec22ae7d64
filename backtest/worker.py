"""The one worker program: runs shards, whatever the transport.

``python -m backtest.worker [--data ROOT] [--max-memory BYTES] [--heartbeat SECONDS]`` speaks the
framed protocol of ``backtest.protocol`` on stdin/stdout. It stays alive across shards (numba
compiles once), sends a heartbeat every second from a thread, and exits when its input ends or
when its output can no longer be written (the coordinator or the SSH channel is gone), so it
never outlives the run that started it.

A shard spec (JSON)::

    {"id", "symbol", "strategy": <source hash>, "start_ns", "end_ns", "settings": {...},
     "files": [[path, data_sha256], ...],          # in year order, enough for the largest warm-up
     "groups": [{"warmup": w, "parts": [sha256, ...], "tasks": [[key, params], ...]}, ...]}

Relative paths are resolved under ``--data``. Each group's tasks see exactly ``warmup`` bars
before the start, so a task's result depends only on what its key names; groups that see the same
slice of the bars (their warm-ups reach back to the same bar) run together and share the
strategy's indicators.
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import sys
import threading
import time
import traceback
from array import array
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from backtest.protocol import FrameWriter, read_frame

Emit = Callable[..., None]

#: Thread pools a worker keeps to one thread unless its environment says otherwise: workers run
#: one per core already, so more threads only contend. OpenBLAS (numpy's) also starts a thread
#: per core at numpy's import, and these spin on the cores the run needs (~0.1 CPU-seconds at
#: every start, measured); Arrow sizes its pool from OMP_NUM_THREADS.
POOLS = {"NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}

#: ``keep_freed_memory``'s settings: arrays up to this size come from the heap (glibc's default
#: is 128 KiB, raised on the fly up to 32 MiB as large blocks are freed) ...
MMAP_THRESHOLD = 32 << 20
#: ... and up to this much freed memory at the heap's top is kept (default 128 KiB, then twice the
#: raised threshold) rather than handed back to the kernel.
TRIM_THRESHOLD = 128 << 20


def keep_freed_memory() -> bool:
    """Make this process's ``malloc`` (glibc) keep freed memory for reuse instead of giving it back
    to the kernel; whether it now does (False where there is no glibc ``mallopt``).

    A shard allocates and frees megabytes of arrays: the indicators (a year of minute bars is 786 KB
    an array, and the SMA grid keeps 18 of them a shard), targets, the simulation's buffers, the
    result files' bytes. By default glibc maps large blocks afresh and trims the heap's free top
    back to the kernel, so the next shard's arrays land on pages never touched, and every such
    page costs a page fault when first written: ~4 µs each on a virtual machine like this one
    (measured). With both thresholds fixed high, the shards after a worker's first reuse its heap:
    in a run of the SMA grid, a worker's 10 shards took ~9 900 page faults instead of 15 000-21 000,
    and 40-70 ms less CPU. The cost: a worker keeps its peak heap until it exits. Called after
    numpy's and numba's imports, when ctypes is loaded already (llvmlite is built on it)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - a Linux without glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    return bool(mallopt(m_mmap_threshold, MMAP_THRESHOLD)) and bool(mallopt(m_trim_threshold, TRIM_THRESHOLD))


def slice_bars(bars: Any, warmup: int, parts: list[str]) -> Any:
    """The bars a group of tasks with ``warmup`` bars of warm-up sees, cut from a longer read."""
    from backtest.engine.bars import Bars

    offset = max(0, bars.start - warmup)
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


def _by_slice(bars: Any, groups: list[dict[str, Any]]) -> list[tuple[Any, list[Any]]]:
    """The shard's tasks by the bars they see: groups whose warm-ups reach back to the same bar
    (e.g. every group when the data starts after the range's start minus the warm-up) run as one,
    on one slice, so they share its indicators."""
    merged: dict[int, tuple[Any, list[Any]]] = {}
    for group in groups:
        offset = max(0, bars.start - group["warmup"])
        if offset not in merged:
            merged[offset] = (slice_bars(bars, group["warmup"], group["parts"]), [])
        merged[offset][1].extend(group["tasks"])
    return list(merged.values())


class Runner:
    """Runs shards in this process; the inline executor uses it directly."""

    def __init__(self, data_root: Path | None, results: Path | None = None) -> None:
        self.data_root = data_root
        # uncompressed copies of the partitions read (``backtest.data.bars_cache``)
        from backtest.data.bars_cache import folder

        self.bars_cache = folder(data_root) if data_root is not None else None
        self.results = results  # a results store this worker writes into itself (same machine)
        self.strategies: dict[str, Any] = {}
        from backtest.results import environment

        self.env = environment()

    def add_strategy(self, msg: dict[str, Any]) -> None:
        if msg["hash"] in self.strategies:
            return
        from backtest.strategy import load_strategy_source

        self.strategies[msg["hash"]] = load_strategy_source(msg["source"], msg["filename"], msg.get("name") or None)

    def _path(self, p: str) -> Path:
        path = Path(p)
        if path.is_absolute() or self.data_root is None:
            return path
        return self.data_root / path

    def run_shard(self, spec: dict[str, Any], emit: Emit) -> None:
        """Run every task of ``spec``; ``emit(header, body)`` receives each outcome as it is made."""
        from backtest.data import read_bars
        from backtest.engine import SimSettings
        from backtest.engine.records import METRIC_NAMES
        from backtest.errors import BtError
        from backtest.results import Encoder, ResultStore

        sid = spec["id"]
        t0 = time.perf_counter()
        try:
            cls = self.strategies[spec["strategy"]]
            settings = SimSettings(**spec["settings"])
            files = [(self._path(p), h) for p, h in spec["files"]]
            max_warmup = max(g["warmup"] for g in spec["groups"])
            bars = read_bars(spec["symbol"], files, spec["start_ns"], spec["end_ns"], max_warmup, self.bars_cache)
        except BtError as exc:
            emit({"t": "shard_error", "shard": sid, "error": str(exc), "details": ""})
            return
        except Exception as exc:
            emit({"t": "shard_error", "shard": sid, "error": f"{type(exc).__name__}: {exc}",
                  "details": traceback.format_exc()})
            return
        from backtest.engine import run_grid

        store = ResultStore(self.results) if self.results is not None else None
        encode = Encoder(spec["symbol"], self.env)

        for gbars, tasks in _by_slice(bars, spec["groups"]):
            keys = [k for k, _ in tasks]
            params = [p for _, p in tasks]
            out = io.StringIO()
            with redirect_stdout(out), redirect_stderr(out):
                try:
                    outcomes: list[Any] = run_grid(cls, gbars, params, settings)
                except Exception as exc:  # the engine itself failed: every task of the group fails
                    outcomes = [exc] * len(keys)
            text = out.getvalue()
            if text:
                emit({"t": "log", "shard": sid, "text": text})
            stored: list[str] = []
            n_trades: list[int] = []
            values: array[float] = array("d")
            for key, p, res in zip(keys, params, outcomes, strict=True):
                if isinstance(res, BaseException):
                    details = getattr(res, "details", "") or "".join(
                        traceback.format_exception(type(res), res, res.__traceback__))
                    msg = str(res) if isinstance(res, BtError) else f"{type(res).__name__}: {res}"
                    emit({"t": "task_error", "shard": sid, "key": key, "error": msg, "details": details})
                else:
                    body = encode(key, p, res.metrics, res.trades)
                    if store is not None:
                        # the file is stored before it is reported; only its metrics travel
                        store.write(key, body)
                        stored.append(key)
                        n_trades.append(len(res.trades))
                        values.extend(res.metrics[n] for n in METRIC_NAMES)
                    else:
                        emit({"t": "result", "shard": sid, "key": key}, body)
            if stored:
                emit({"t": "results", "shard": sid, "keys": stored, "n_trades": n_trades, "metrics": METRIC_NAMES},
                     values.tobytes())
        emit({"t": "shard_done", "shard": sid, "seconds": time.perf_counter() - t0})


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def serve(stdin: Any, writer: FrameWriter, data_root: Path | None, heartbeat: float,
          coordinator_timeout: float = 0.0, results: Path | None = None) -> None:
    """Answer frames until the input ends. A reader thread takes frames off the input as they
    come, even while a shard runs, so that with ``coordinator_timeout`` the worker can tell that
    its coordinator has gone silent (a frozen or cut-off coordinator sends no pings) and exit."""
    import queue
    import socket

    stop = threading.Event()
    inbox: queue.Queue[tuple[dict[str, Any], bytes] | None] = queue.Queue()
    last_heard = [time.monotonic()]

    def read() -> None:
        try:
            while True:
                frame = read_frame(stdin)
                last_heard[0] = time.monotonic()
                if frame is None or frame[0]["t"] == "stop":
                    break
                if frame[0]["t"] != "ping":
                    inbox.put(frame)
        except Exception:
            pass
        inbox.put(None)

    def beat() -> None:
        while not stop.wait(heartbeat):
            if coordinator_timeout and time.monotonic() - last_heard[0] > coordinator_timeout:
                os._exit(4)  # the coordinator went silent: never outlive it
            try:
                writer.send({"t": "hb"})
            except (OSError, ValueError):
                os._exit(3)  # nobody is listening any more

    runner = Runner(data_root, results)
    from backtest.engine.run import warm_up

    try:
        warm_up()
    except Exception:  # noqa: S110 - the first shard meets (and reports) the same problem
        pass
    gc.freeze()  # numpy, numba and the kernels stay for good: no full collection walks them again
    gc.enable()
    writer.send({"t": "hello", "pid": os.getpid(), "cores": _cores(), "host": socket.gethostname(),
                 "env": runner.env})
    threading.Thread(target=read, daemon=True, name="bt-read").start()
    threading.Thread(target=beat, daemon=True, name="bt-heartbeat").start()
    try:
        while True:
            frame = inbox.get()
            if frame is None:
                break
            msg, _ = frame
            kind = msg["t"]
            if kind == "strategy":
                try:
                    runner.add_strategy(msg)
                except Exception as exc:
                    writer.send({"t": "fatal", "error": str(exc), "details": traceback.format_exc()})
            elif kind == "shard":
                runner.run_shard(msg["shard"], writer.send)
    finally:
        stop.set()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m backtest.worker", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="root for relative partition paths")
    ap.add_argument("--results", type=Path, default=None,
                    help="write result files into this bt root's results store and send only their metrics "
                         "(for workers on the coordinator's machine)")
    ap.add_argument("--max-memory", type=int, default=0, help="address-space cap in bytes (0: none)")
    ap.add_argument("--heartbeat", type=float, default=1.0, help="seconds between heartbeats")
    ap.add_argument("--coordinator-timeout", type=float, default=0.0,
                    help="exit when nothing (not even a ping) came from the coordinator for this long (0: never)")
    ap.add_argument("--fork-server", type=int, default=None, metavar="FD",
                    help="run as the fork server of a local executor on control socket FD "
                         "(see backtest/executors/forkserver.py)")
    args = ap.parse_args(argv)
    # The imports and the warm-up make ~500 000 objects that all live as long as the process:
    # collecting while they are made only walks them again and again (0.05-0.15 of ~0.5 CPU-s).
    # On again, with them frozen, once warm (``serve``).
    gc.disable()
    for name, value in POOLS.items():
        os.environ.setdefault(name, value)  # before numpy's import: BLAS reads it once, at load
    if args.fork_server is not None:
        from backtest.forkserver import serve as fork_server

        fork_server(args.fork_server)
        return
    # The protocol owns the real stdout; anything else written to fd 1 (a stray print in C code)
    # goes to stderr instead of corrupting frames.
    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # Import the heavy modules now, while the coordinator is still planning, and before any
    # memory cap (numba's import maps a lot of address space).
    import backtest.data  # noqa: F401
    import backtest.engine  # noqa: F401
    import backtest.strategy  # noqa: F401

    keep_freed_memory()  # a forked worker has it from its fork server already; ~0.1 ms
    if args.max_memory:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (args.max_memory, args.max_memory))
    serve(sys.stdin.buffer, FrameWriter(proto_out), args.data, args.heartbeat, args.coordinator_timeout,
          args.results)


if __name__ == "__main__":
    main()

"""How a worker process tunes itself: thread pools, malloc, the lean numba load, and warming up.

Everything here runs in bt's own worker processes and fork server only, never in a program that
imports bt as a library.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

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


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1




def warm_up(every: bool = False) -> None:
    """Load the simulation kernel from numba's cache now, the lean way (``numba_load``), so that a
    worker does it while the coordinator still plans rather than when its first shard arrives;
    with ``every``, every kernel a task may call (a sandboxed worker: in its sandbox numba's
    cache cannot be written, so what is compiled there would be compiled again by every worker).

    One worker of a machine at a time does it first: the others wait (``kernel_lock``), then load
    what it compiled, instead of each compiling the same kernels at once on a cold cache."""
    from backtest.engine.run import warm_up as load_kernels
    from backtest.engine.run import warm_up_all
    from backtest.worker import numba_load

    numba_load.install()
    with kernel_lock():
        if not every:
            load_kernels()
            return
        # a kernel whose compiled code is in the cache is left to load when first called (its
        # cache can be read in the sandbox); only what is missing is compiled, and cached, now
        warm_up_all(skip=numba_load.cached)
        import numpy as np

        from backtest.engine.orders import stored_records_nb
        from backtest.engine.records import PORTFOLIO_TRADE_DTYPE, TRADE_DTYPE
        from backtest.store.results import stored_trades

        if not numba_load.cached(stored_records_nb):
            for dtype in (TRADE_DTYPE, PORTFOLIO_TRADE_DTYPE):  # the result encoder's kernel
                stored_trades(np.zeros(1, dtype))


@contextmanager
def kernel_lock() -> Iterator[None]:
    """Held exclusively by the first process of a machine to warm up bt's kernels, shared by those
    that come while it does (they wait, then load together). No lock where the kernels' cache
    folder cannot be written (nothing would be cached there either)."""
    import fcntl

    from backtest import engine

    folder = os.path.join(os.path.dirname(os.path.abspath(engine.__file__)), "__pycache__")
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(os.path.join(folder, "bt-warm.lock"), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fcntl.flock(fd, fcntl.LOCK_SH)  # another process warms up: wait for its kernels
        yield
    finally:
        os.close(fd)  # releases the lock

"""bt's side of the benchmark: the hooks phase 2 fills in. Everything else (data, peers, checks,
tables, RESULTS.md) is done by run.py.

Each hook gets a ``BenchContext`` and returns one ``Measurement`` per table row, timed in fresh
processes with ``measure.measure_repeats`` (or ``measure.run_measured``), never in-process. A hook
that cannot run yet raises ``NotWired``; run.py then prints "bt: not yet wired" and reports the
peers alone. Nothing here may produce a number that was not measured.

What each hook must do (phase 2):

``run_bt_sma_grid(ctx)``
    Untimed set-up: a bt data root under ``ctx.work_dir / "bt-root"`` (``--data`` / ``BT_DATA``);
    import ``load_data(ctx.minute_data)`` with ``Store.import_arrays(*data.arrays(i))`` for every
    symbol (skip when already imported: the store's manifest makes re-import a no-op).
    Timed, ``ctx.repeats`` times each, in a fresh process from CLI start to results recorded:
    ``bt --data ROOT run strategies/sma_cross.py --param fast=5:50:5 --param slow=20:200:20
    --param short=false --commission 0.001 --cash 100000 --json --force`` (or a fresh results root
    per repeat: every repeat must compute all 1 800 tasks, none may come from the cache).
    Two rows: ``variant="warm numba cache"`` (after ``ctx.warmup`` untimed runs) and
    ``variant="cold numba cache"`` (``NUMBA_CACHE_DIR`` pointed at an empty directory per repeat).
    ``bar_evals=SMA_GRID_BAR_EVALS``, ``procs`` = the number of workers bt used.
    Answers (untimed): ``bt --data ROOT report RUN_ID --format json`` →
    ``{(symbol, fast, slow): {"final_equity": metrics["final_equity"], "trades": <count>}}`` for
    every task, where ``trades`` counts filled entries *including* a position still open at the end
    (vectorbt's "Total Trades"; bt's ``trades`` metric is defined that way in
    backtest/engine/metrics.py, so it maps directly). run.py checks them against vectorbt at 1e-9
    relative, and a sample against check.reference_sma_long_only.
``run_bt_small(ctx)``
    The same for ``ctx.daily_data`` and ``SMALL_GRID``: ``--param fast=5,10,20,40,80
    --param slow=100,200`` over all 40 symbols = 400 tasks; ``bar_evals=SMALL_BAR_EVALS``.
``run_bt_rerun(ctx)``
    After one full ``sma_grid`` run into a root: (a) the same command again without ``--force``
    (``variant="cached rerun"``, expect 0 tasks computed: assert it from the ``--json`` output);
    (b) the grid with one slow value changed, 200 -> 210 (``--param
    slow=20,40,60,80,100,120,140,160,180,210``; ``variant="one changed parameter"``: only the 10
    tasks with slow=210 per symbol are computed; assert the count from ``--json``). Restore the root between repeats so each repeat sees the same cache.
``run_bt_startup(ctx)``
    ``bt --help`` in a fresh process, ``ctx.repeats`` times (implemented below; it needs nothing
    from the engine or the job system).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common import DAILY, MINUTE, REPO_DIR, SMA_GRID, SMALL_GRID
from measure import Measurement, measure_repeats

SMA_GRID_BAR_EVALS = MINUTE.symbols * MINUTE.bars * len(SMA_GRID)  # 176 904 000
SMALL_BAR_EVALS = DAILY.symbols * DAILY.bars * len(SMALL_GRID)  # 1 008 000


class NotWired(NotImplementedError):
    """This bt workload is not wired into the benchmark yet (phase 2)."""


@dataclass
class BenchContext:
    work_dir: Path  # benchmarks/.work: scratch space for bt roots, answer files, caches
    minute_data: Path  # the sma_grid data file (common.MINUTE)
    daily_data: Path  # the small-backtests data file (common.DAILY)
    repeats: int
    warmup: int
    timeout: float | None
    progress: Callable[[str], None]


def bt_command() -> list[str]:
    """How to start bt as a user would: the ``bt`` console script beside this Python, else ``-m``."""
    script = Path(sys.executable).with_name("bt")
    if script.exists():
        return [str(script)]
    found = shutil.which("bt")
    return [found] if found else [sys.executable, "-m", "backtest"]


def run_bt_sma_grid(ctx: BenchContext) -> list[Measurement]:
    raise NotWired(
        "bt: not yet wired (sma_grid; phase 2: bt_side.run_bt_sma_grid must import the minute data with "
        "Store.import_arrays, time `bt run strategies/sma_cross.py ...` warm and cold, and return answers)"
    )


def run_bt_small(ctx: BenchContext) -> list[Measurement]:
    raise NotWired(
        "bt: not yet wired (small; phase 2: bt_side.run_bt_small, 40 daily symbols x 10 combos via `bt run`)"
    )


def run_bt_rerun(ctx: BenchContext) -> list[Measurement]:
    raise NotWired(
        "bt: not yet wired (rerun; phase 2: bt_side.run_bt_rerun, cached rerun and one-changed-parameter rerun)"
    )


def run_bt_startup(ctx: BenchContext) -> list[Measurement]:
    """``bt --help`` wall time in a fresh process (no warm-up beyond ``ctx.warmup`` untimed runs)."""
    env = dict(os.environ)
    argv = [*bt_command(), "--help"]
    for _ in range(ctx.warmup):  # byte-compile and page in, as a user's second call would find it
        measure_repeats(
            Measurement("bt", "startup", "warm-up", 0),
            lambda i: (argv, env, REPO_DIR),
            1,
            progress=lambda s: None,
            timeout=ctx.timeout,
        )
    m = Measurement("bt", "startup", "bt --help", 0)
    return [
        measure_repeats(
            m, lambda i: (argv, env, REPO_DIR), ctx.repeats, timeout=ctx.timeout, progress=ctx.progress
        )
    ]

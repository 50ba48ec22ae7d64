"""bt's side of the benchmark: its rows, timed like the peers'. Everything else (data, peers,
checks, tables, RESULTS.md) is done by run.py.

Each hook gets a ``BenchContext`` and returns one ``Measurement`` per table row, timed in fresh
processes with ``measure.measure_repeats`` (or ``measure.run_measured``), never in-process. A hook
that cannot run raises ``NotWired``; run.py then prints why and reports the peers alone. Nothing
here produces a number that was not measured. Every bt process is the ``bt`` console script beside
this Python (``nox -s bench``: the session's venv), started in the repository with
``measure.python_env()``; it runs on bt's default local executor, one worker per core (``procs``).

``run_bt_sma_grid(ctx)``
    Untimed set-up: the bt data root ``ctx.work_dir / "bt-root-minute"``, into which every symbol
    of ``ctx.minute_data`` is imported with ``Store.import_arrays(*data.arrays(i))`` (a no-op when
    it is there already: the manifest knows the content).
    Timed, ``ctx.repeats`` times per row, a fresh process from CLI start until the run is recorded:
    ``bt --data ROOT run strategies/sma_cross.py --param fast=5:50:5 --param slow=20:200:20
    --param short=false --commission 0.001 --cash 100000 --json --force``. ``--force``: every repeat
    computes all 1 800 tasks (asserted from the ``--json`` summary), writes their result files and
    records them in the catalog. No ``--from/--to``: bt trades from bar 0, as the peers do.
    Rows: ``"warm numba cache"`` (after ``max(1, ctx.warmup)`` untimed runs, numba's cache in
    __pycache__ next to the installed kernels is filled) and ``"cold numba cache"``: ``NUMBA_CACHE_DIR`` set to a
    new empty directory per repeat, inherited by bt's workers, so every kernel is compiled again
    (checked: the directory holds index files afterwards); byte code and the page cache stay warm.
    The phase ``execute`` is the ``seconds`` bt's summary reports (recording the run to the last
    result recorded: no interpreter start, imports or planning).
    Answers (untimed, every repeat): ``bt --data ROOT report RUN_ID --format json`` →
    ``{(symbol, fast, slow): {"final_equity", "trades", "closed_trades"}}``. ``trades`` is bt's
    ``trades`` metric, which counts the position still open at the end (backtest/engine/metrics.py),
    like vectorbt's "Total Trades"; ``closed_trades`` counts the stored trades whose ``closed``
    flag is set (the stored list must have ``trades`` rows). run.py checks every task against
    vectorbt (1e-9 relative equity, equal trade counts) and a sample against
    ``check.reference_sma_long_only``.
``run_bt_small(ctx)``
    The same for ``ctx.daily_data`` in ``bt-root-daily`` with ``--param fast=5,10,20,40,80
    --param slow=100,200 --param short=false``: 40 symbols x 10 combos = 400 tasks.
``run_bt_rerun(ctx)``
    A root of its own (``bt-root-rerun``) after one full sma_grid run; its run state (results,
    catalog, grid cache, saved sources) is snapshotted and restored before every run, so each
    repeat sees the same cache. (a) ``"cached rerun"``: the same command without ``--force``,
    0 tasks computed (asserted); (b) ``"one changed parameter"``: ``--param
    slow=20,40,60,80,100,120,140,160,180,210``, exactly the 200 slow=210 tasks computed (asserted),
    a sample of them checked against the slow reference. Warm numba cache.
``run_bt_startup(ctx)``
    ``bt --help`` in a fresh process, ``ctx.repeats`` times after ``ctx.warmup`` untimed ones.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import check
from common import CASH, COMMISSION, DAILY, MINUTE, REPO_DIR, SMA_GRID, SMALL_GRID, TaskKey, load_data
from measure import CommandFailed, Measurement, ProcResult, measure_repeats, python_env, run_measured

SMA_GRID_BAR_EVALS = MINUTE.symbols * MINUTE.bars * len(SMA_GRID)  # 176 904 000
SMALL_BAR_EVALS = DAILY.symbols * DAILY.bars * len(SMALL_GRID)  # 1 008 000

STRATEGY = "strategies/sma_cross.py"  # relative to REPO_DIR, the cwd of every bt process
# The grids as `bt run --param` specs; sma_cross's constraint fast < slow leaves exactly SMA_GRID
# (90 combos) and SMALL_GRID (10), in every symbol the store holds (all of the data file's).
SMA_GRID_PARAMS = ("fast=5:50:5", "slow=20:200:20", "short=false")
SMALL_PARAMS = ("fast=5,10,20,40,80", "slow=100,200", "short=false")


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


def bt_workers() -> int:
    """How many local workers ``bt run`` starts by default (one per core, bt's own definition)."""
    from backtest.executors import cores

    return cores()


def prepare_root(root: Path, data_path: Path, progress: Callable[[str], None]) -> None:
    """Import every symbol of ``data_path`` into the bt store at ``root`` (untimed set-up).

    The store's manifest makes re-importing identical arrays a no-op, so this is cheap when the
    root exists already."""
    from backtest.data import Store

    data = load_data(data_path)
    store = Store(root)
    written = 0
    for i in range(len(data.symbols)):
        written += len(store.import_arrays(*data.arrays(i)).written)
    if written:
        progress(
            f"  bt: imported {len(data.symbols)} symbols of {data_path.name} into {root} ({written} partitions)"
        )


def run_argv(root: Path, params: Sequence[str], *, force: bool) -> list[str]:
    """``bt --data ROOT run strategies/sma_cross.py --param ... --json`` with the benchmark's settings."""
    argv = [*bt_command(), "--data", str(root), "run", STRATEGY]
    for p in params:
        argv += ["--param", p]
    argv += ["--commission", repr(COMMISSION), "--cash", repr(CASH), "--json"]
    return argv + (["--force"] if force else [])


def run_summary(res: ProcResult, *, tasks: int, computed: int) -> dict[str, Any]:
    """The ``--json`` object of a finished ``bt run``; raises unless it did exactly what was expected."""
    lines = [ln for ln in res.stdout.splitlines() if ln.strip().startswith("{")]
    if not lines:
        raise CommandFailed(f"bt run printed no JSON summary:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    summary: dict[str, Any] = json.loads(lines[-1])
    want = {"status": "done", "tasks": tasks, "computed": computed, "cached": tasks - computed, "failed": 0}
    got = {k: summary.get(k) for k in want}
    if got != want:
        raise CommandFailed(f"bt run: expected {want}, got {summary}\nstderr: {res.stderr[-2000:]}")
    return summary


def bt_answers(root: Path, run_id: str, timeout: float | None) -> dict[TaskKey, dict[str, Any]]:
    """Every task's answer of run ``run_id`` (untimed), as run.py's checks take them.

    ``final_equity`` and ``trades`` come from ``bt report RUN_ID --format json`` (the output contract; bt's
    ``trades`` metric counts the position still open at the end, like vectorbt's "Total Trades");
    ``closed_trades`` (round trips) from each task's stored trade list (``closed`` flag), which must
    have exactly ``trades`` rows."""
    from backtest.store.results import ResultStore

    res = subprocess.run(
        [*bt_command(), "--data", str(root), "report", run_id, "--format", "json"],
        capture_output=True,
        text=True,
        env=python_env(),
        cwd=REPO_DIR,
        timeout=timeout,
    )
    if res.returncode != 0:
        raise CommandFailed(f"bt report {run_id} exited {res.returncode}: {res.stderr[-2000:]}")
    store = ResultStore(root)
    out: dict[TaskKey, dict[str, Any]] = {}
    for rec in json.loads(res.stdout):
        p = rec["params"]
        key = (rec["symbol"], int(p["fast"]), int(p["slow"]))
        if rec["status"] != "done" or key in out:
            raise CommandFailed(f"bt report {run_id}: task {key} is {rec['status']!r} or listed twice")
        trades = store.read(rec["key"]).trades
        n = rec["metrics"]["trades"]
        if n != trades.shape[0]:
            raise CommandFailed(
                f"bt report {run_id}: {key} has trades={n} but {trades.shape[0]} stored trades"
            )
        out[key] = {
            "final_equity": rec["metrics"]["final_equity"],
            "trades": int(n),
            "closed_trades": int(trades["closed"].sum()),
        }
    return out


def _grid_rows(
    ctx: BenchContext,
    workload: str,
    root: Path,
    data_path: Path,
    params: Sequence[str],
    n_tasks: int,
    bar_evals: int,
) -> list[Measurement]:
    """The warm and cold rows of one full-grid workload (every repeat computes all ``n_tasks``)."""
    prepare_root(root, data_path, ctx.progress)
    argv = run_argv(root, params, force=True)
    procs = bt_workers()

    def collect(i: int, res: ProcResult) -> tuple[dict[str, float], dict[TaskKey, dict[str, Any]]]:
        summary = run_summary(res, tasks=n_tasks, computed=n_tasks)
        return {"execute_s": float(summary["seconds"])}, bt_answers(root, summary["run_id"], ctx.timeout)

    # Warm: numba's on-disk cache (__pycache__ next to the installed kernels) filled by at least one untimed run.
    for _ in range(max(1, ctx.warmup)):
        run_summary(
            run_measured(argv, env=python_env(), cwd=REPO_DIR, timeout=ctx.timeout).check(),
            tasks=n_tasks,
            computed=n_tasks,
        )
    warm = Measurement("bt", workload, "warm numba cache", bar_evals, procs=procs)
    measure_repeats(
        warm,
        lambda i: (argv, python_env(), REPO_DIR),
        ctx.repeats,
        collect=collect,
        timeout=ctx.timeout,
        progress=ctx.progress,
    )
    # What the sandbox costs: the same runs with it off (the rows' ratio is the cost)
    unboxed = Measurement("bt", workload, "warm numba cache, --sandbox off", bar_evals, procs=procs)
    measure_repeats(
        unboxed,
        lambda i: ([*argv, "--sandbox", "off"], python_env(), REPO_DIR),
        ctx.repeats,
        collect=collect,
        timeout=ctx.timeout,
        progress=ctx.progress,
    )
    unboxed.notes.append(f"the sandbox (on in the row above) costs {sandbox_cost(warm, unboxed)}")

    # Cold: a fresh, empty NUMBA_CACHE_DIR per repeat, inherited by bt's workers, so every kernel
    # is compiled again (Python's byte code and the page cache stay warm).
    cold = Measurement("bt", workload, "cold numba cache (empty NUMBA_CACHE_DIR)", bar_evals, procs=procs)
    cache_base = ctx.work_dir / "numba-cold"
    shutil.rmtree(cache_base, ignore_errors=True)

    def cold_run(i: int) -> tuple[list[str], dict[str, str], Path]:
        cache = cache_base / f"{workload}-{i}"
        cache.mkdir(parents=True)
        return argv, python_env(NUMBA_CACHE_DIR=str(cache)), REPO_DIR

    def cold_collect(i: int, res: ProcResult) -> tuple[dict[str, float], dict[TaskKey, dict[str, Any]]]:
        if not any((cache_base / f"{workload}-{i}").rglob("*.nbi")):
            raise CommandFailed(
                "cold bt run wrote nothing to its NUMBA_CACHE_DIR: the cache was not redirected"
            )
        shutil.rmtree(cache_base / f"{workload}-{i}", ignore_errors=True)
        return collect(i, res)

    measure_repeats(
        cold, cold_run, ctx.repeats, collect=cold_collect, timeout=ctx.timeout, progress=ctx.progress
    )
    shutil.rmtree(cache_base, ignore_errors=True)
    return [warm, unboxed, cold]


def sandbox_cost(on: Measurement, off: Measurement) -> str:
    """The sandbox's cost as the median wall time with it on against off, in per cent."""
    a, b = on.wall, off.wall
    return f"{(a / b - 1) * 100:+.1f} % of the median wall time ({a:.3f} s on, {b:.3f} s off)"


def run_bt_sma_grid(ctx: BenchContext) -> list[Measurement]:
    """Workload 1 in bt: 20 minute-bar symbols x the 90-combo grid = 1 800 tasks, warm and cold.

    Every repeat is ``bt run ... --force``: all 1 800 tasks computed and their results written
    (over the previous repeat's identical files) and recorded in the catalog."""
    return _grid_rows(
        ctx,
        "sma_grid",
        ctx.work_dir / "bt-root-minute",
        ctx.minute_data,
        SMA_GRID_PARAMS,
        MINUTE.symbols * len(SMA_GRID),
        SMA_GRID_BAR_EVALS,
    )


def run_bt_small(ctx: BenchContext) -> list[Measurement]:
    """Workload 2 in bt: 40 daily symbols x 10 combos = 400 tasks, warm and cold."""
    return _grid_rows(
        ctx,
        "small",
        ctx.work_dir / "bt-root-daily",
        ctx.daily_data,
        SMALL_PARAMS,
        DAILY.symbols * len(SMALL_GRID),
        SMALL_BAR_EVALS,
    )


# The parts of a data root a run changes (``bars/`` is only read). ``results/`` files are written
# whole and renamed into place, never modified, so the snapshot can share them by hard links; the
# catalog (and its write-ahead log, if any) is modified in place and is copied.
_RUN_STATE = ("results", "catalog.duckdb", "catalog.duckdb.wal", "grids", "strategies")


def _snapshot(root: Path, snap: Path) -> None:
    shutil.rmtree(snap, ignore_errors=True)
    snap.mkdir(parents=True)
    for name in _RUN_STATE:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, snap / name, copy_function=os.link)
        elif src.exists():
            shutil.copy2(src, snap / name)


def _clear_run_state(root: Path) -> None:
    for name in _RUN_STATE:
        dst = root / name
        if dst.is_dir():
            shutil.rmtree(dst)
        elif dst.exists():
            dst.unlink()


def _restore(root: Path, snap: Path) -> None:
    _clear_run_state(root)
    for name in _RUN_STATE:
        dst = root / name
        src = snap / name
        if src.is_dir():
            shutil.copytree(src, dst, copy_function=os.link)
        elif src.exists():
            shutil.copy2(src, dst)


def run_bt_rerun(ctx: BenchContext) -> list[Measurement]:
    """Workload 3: the sma_grid job again, fully cached, and with one slow value changed (200 -> 210).

    Set-up (untimed): a root of its own with the minute data and one full run of the grid; its run
    state (results, catalog, grid cache, saved sources) is snapshotted and restored before every
    run, warm-ups included, so each repeat sees the same cache: 1 800 stored results, the changed
    grid never expanded before. Warm numba cache. The 200 newly computed tasks of the changed run
    (slow=210) are checked against the slow reference on a sample."""
    root = ctx.work_dir / "bt-root-rerun"
    snap = ctx.work_dir / "bt-root-rerun-snapshot"
    prepare_root(root, ctx.minute_data, ctx.progress)
    _clear_run_state(root)  # nothing left over from an earlier, interrupted benchmark
    n_tasks = MINUTE.symbols * len(SMA_GRID)
    base = run_argv(root, SMA_GRID_PARAMS, force=False)
    res = run_measured(base, env=python_env(), cwd=REPO_DIR, timeout=ctx.timeout).check()
    run_summary(res, tasks=n_tasks, computed=n_tasks)
    _snapshot(root, snap)
    changed_slow = [s for s in range(20, 220, 20) if s != 200] + [210]
    changed = [p for p in SMA_GRID_PARAMS if not p.startswith("slow=")] + [
        "slow=" + ",".join(str(s) for s in changed_slow)
    ]
    n_new = MINUTE.symbols * sum(1 for f, s in SMA_GRID if s == 200)  # 20 symbols x 10 fast values
    cached = _rerun_row(ctx, root, snap, "cached rerun (0 computed)", base, n_tasks, 0)[0]
    unboxed = _rerun_row(ctx, root, snap, "cached rerun (0 computed), --sandbox off", [*base, "--sandbox", "off"],
                         n_tasks, 0)[0]
    unboxed.notes.append(f"the sandbox costs {sandbox_cost(cached, unboxed)} (no worker starts: nothing to compute)")
    one, run_id = _rerun_row(
        ctx,
        root,
        snap,
        f"one changed parameter, slow 200 -> 210 ({n_new} computed)",
        run_argv(root, changed, force=False),
        n_tasks,
        n_new,
    )
    new = {k: v for k, v in bt_answers(root, run_id, ctx.timeout).items() if k[2] == 210}
    if len(new) != n_new:
        raise CommandFailed(f"changed rerun: {len(new)} tasks with slow=210, expected {n_new}")
    one.notes.append(
        reference_sample(ctx.minute_data, new, 3).summary() + " (of the newly computed slow=210 tasks)"
    )
    _restore(root, snap)
    return [cached, unboxed, one]


def _rerun_row(
    ctx: BenchContext, root: Path, snap: Path, variant: str, argv: list[str], n_tasks: int, computed: int
) -> tuple[Measurement, str]:
    """One rerun row: the run state restored from ``snap`` before each run (untimed), ``ctx.warmup``
    untimed runs, then ``ctx.repeats`` timed ones that must compute exactly ``computed`` tasks.
    Returns the row and the last run's id."""
    run_ids: list[str] = []

    def make(i: int) -> tuple[list[str], dict[str, str], Path]:
        _restore(root, snap)
        return argv, python_env(), REPO_DIR

    def collect(i: int, res: ProcResult) -> tuple[dict[str, float], None]:
        s = run_summary(res, tasks=n_tasks, computed=computed)
        run_ids.append(s["run_id"])
        return {"execute_s": float(s["seconds"])}, None

    for _ in range(ctx.warmup):
        make(0)
        run_summary(
            run_measured(argv, env=python_env(), cwd=REPO_DIR, timeout=ctx.timeout).check(),
            tasks=n_tasks,
            computed=computed,
        )
    m = Measurement("bt", "rerun", variant, 0, procs=bt_workers())
    measure_repeats(m, make, ctx.repeats, collect=collect, timeout=ctx.timeout, progress=ctx.progress)
    return m, run_ids[-1]


def reference_sample(data_path: Path, answers: dict[TaskKey, dict[str, Any]], n: int) -> check.CheckReport:
    """``answers`` on a seeded sample of ``n`` tasks against ``check.reference_sma_long_only``; raises on disagreement."""
    data = load_data(data_path)
    keys = check.sample_keys(answers, n, seed=1)
    ref = {}
    for sym, fast, slow in keys:
        i = data.symbols.index(sym)
        ref[(sym, fast, slow)] = check.reference_sma_long_only(
            data.open[i].tolist(), data.close[i].tolist(), fast, slow
        )
    return check.require_agreement(
        ref,
        answers,
        names=("reference (fractional)", "bt"),
        keys=keys,
        fields=("final_equity", "trades", "closed_trades"),
    )


def run_bt_startup(ctx: BenchContext) -> list[Measurement]:
    """``bt --help`` wall time in a fresh process (no warm-up beyond ``ctx.warmup`` untimed runs)."""
    env = python_env()
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

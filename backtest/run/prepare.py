"""Check everything and plan: a request becomes a ``Prepared`` run, or one clear error.

Everything that can be wrong with the input is found here, before a run is recorded or a worker
started. ``prepare_started`` also starts the executor's workers while it plans, when there is
likely work, so that their start-up (imports, numba) overlaps the planning.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from backtest import paths
from backtest.errors import BtError, DataError, PlanError, UsageError
from backtest.executors.base import Executor, ExecutorOptions
from backtest.plan import Columns, TaskTable, make_shards, make_tasks, parse_range, shards_of_columns
from backtest.run.grid_cache import grid_cached, grid_of, remember_grid
from backtest.run.request import Prepared, RunRequest, symbols_of
from backtest.spec import Job, Task
from backtest.trace import mark


def executor_options(req: RunRequest, root: Path) -> ExecutorOptions:
    return ExecutorOptions(data_root=root, workers=req.workers, timeout=req.timeout, max_memory=req.max_memory,
                           accept_new_hosts=req.accept_new_hosts, sandbox=req.sandbox)


def start_early(req: RunRequest, root: Path, text: str | None) -> Executor | None:
    """Start the executor's workers from the strategy's source text, before the strategy is even
    imported here. None when that is not possible (``prepare`` then reports why)."""
    from backtest.deps import strategy_source
    from backtest.executors import from_url

    if text is None:
        return None
    try:
        ex = from_url(req.executor_url(), executor_options(req, root))
    except BtError:
        return None
    ex.start(strategy_source(text, req.strategy, req.strategy_name))
    return ex


def remote_cache(req: RunRequest, root: Path) -> Any:
    """The shared result cache this run uses (``store.remote.RemoteCache``), or None."""
    from backtest.store.remote import RemoteCache, check_uri, configured

    uri, read_only = configured(req.remote_cache, req.remote_read_only)
    if uri is None:
        return None
    check_uri(uri)
    return RemoteCache(uri, root, read_only)


def prepare(req: RunRequest, root: Path | None = None, text: str | None = None, fetch: bool = True) -> Prepared:
    """Check everything and plan; raises a BtError (exit 2) on bad input, records nothing.
    ``text``: the strategy file as already read for this run (else it is read here). With a
    shared result cache, the results it holds of the tasks to compute are fetched into the local
    store (``fetch``; else, for ``--dry-run``, only counted)."""
    from backtest.catalog.schema import METRICS, OPTIONAL_METRICS
    from backtest.data import Store
    from backtest.data.bars_cache import limit_bytes
    from backtest.data.freq import fmt_ts
    from backtest.executors import parse_url
    from backtest.run.axes import split_settings, with_axes
    from backtest.walkforward import parse_walk_forward

    root = root or paths.root()
    target = parse_url(req.executor_url())
    wf = parse_walk_forward(req.walk_forward, req.holdout, req.anchored, req.select, req.min_trades,
                            [*METRICS, *OPTIONAL_METRICS])
    limit_bytes()  # a bad BT_BARS_CACHE_MB is one error here, not one per shard in the workers
    if text is None:
        text = req.read_source()
    source, strategy_params, strategy_warmups, portfolio = grid_of(req, root, text)
    mark("grid expanded")
    settings, axes = split_settings(req.settings)
    params_list, warmups = with_axes(strategy_params, strategy_warmups, axes)
    if portfolio and any(settings.get(k) for k in ("stop_loss", "take_profit", "trailing_stop")):
        raise UsageError("stops (--stop-loss, --take-profit, --trailing-stop) are for one-symbol strategies; a "
                         "PortfolioStrategy sets its weights itself")
    if "leverage" in settings and not portfolio:
        raise UsageError(f"--leverage is for portfolio strategies (PortfolioStrategy); {source.name or 'this strategy'} "
                         "trades one symbol per task with targets in [-1, 1]")
    start_ns, end_ns = parse_range(req.start, req.end)
    store = Store(root)
    symbols = symbols_of(req, store)
    for s in symbols:
        store.partitions(s)  # unknown symbol → DataError with a suggestion
    if wf is not None:  # windows are counted from the data's first and last bars where the range is open
        from backtest.plan import OPEN_END, OPEN_START
        from backtest.run.walkforward import data_span

        first, last = data_span(store, symbols)
        start_ns = first if start_ns == OPEN_START else start_ns
        end_ns = last if end_ns == OPEN_END else end_ns
    parts: dict[tuple[str, int], list[tuple[str, str]]] = {}
    skipped: list[str] = []
    first_error: DataError | None = None
    for s in symbols:
        for w in sorted(set(warmups)):
            try:
                found = store.resolve(s, start_ns, end_ns, w)
            except DataError as exc:
                if portfolio:  # every member is part of every task
                    raise PlanError(f"{exc}; every symbol of a portfolio needs bars in the range: remove {s} from "
                                    "the universe or change --from/--to") from None
                first_error = first_error or exc
                skipped.append(s)
                break
            parts[(s, w)] = [(p.path, p.sha256) for p in found]
    if len(skipped) == len(symbols):
        raise PlanError(str(first_error) if len(symbols) == 1 else
                        f"no data in the date range for any of the {len(symbols)} symbols ({first_error})")
    mark("data resolved")
    bench, bench_parts = benchmark_of(req, store, start_ns, end_ns)
    job = Job(source, params_list, warmups, [s for s in symbols if s not in skipped], start_ns, end_ns, settings,
              universe=universe_name(req, symbols) if portfolio else "", axes=tuple(axes), benchmark=bench,
              benchmark_parts=bench_parts)
    if wf is not None:
        return _prepare_walk_forward(req, root, text, job, parts, wf, store, target.capacity, target.url,
                                     skipped, portfolio, (strategy_params, strategy_warmups), fetch)
    from backtest.run import plan_cache

    plan = _plan_many if plan_cache.planned(job) >= plan_cache.MIN_TASKS else _plan_few
    tasks, todo, cached, damaged, remote, hits = plan(req, root, job, parts, fetch)
    if isinstance(todo, TaskTable):
        shards = shards_of_columns(job, table_by_symbol(job, todo), parts, target.capacity)
    else:
        shards = make_shards(job, todo, parts, target.capacity)
    mark("shards made")
    remember_grid(req, root, text, source, strategy_params, strategy_warmups, portfolio)
    mark("grid kept")
    notes = [f"result {k[:12]} {why}: set aside, computed again" for k, why in sorted(damaged.items())]
    for sym, (first, last) in ({} if portfolio else store.short_spans(job.symbols, start_ns, end_ns)).items():
        notes.append(f"{sym} has bars only from {fmt_ts(first)} to {fmt_ts(last)}, part of the range: "
                     "rank its results with care")
    return Prepared(req, job, tasks, cached, shards, skipped, target.url, root, parts, notes, remote=remote,
                    remote_hits=hits)


#: what planning found: (every task, those to compute, those cached, damaged results set aside
#: (key -> what is wrong), the shared result cache or None, how many results it gave)
_Planned = tuple[Sequence[Task], Sequence[Task], Sequence[Task], dict[str, str], Any, int]


def _plan_few(req: RunRequest, root: Path, job: Job, parts: dict[Any, Any], fetch: bool) -> _Planned:
    """The tasks of a job of fewer than ``plan_cache.MIN_TASKS`` tasks, hashed, as ``Task``s."""
    from backtest.store.results import ResultStore

    tasks = make_tasks(job, parts)
    mark(f"{len(tasks)} tasks planned")
    damaged: dict[str, str] = {}
    remote = remote_cache(req, root)
    hits = 0
    if req.force:
        have: set[str] = set()
    else:
        results = ResultStore(root)
        have, damaged = results.intact([t.key for t in tasks])
        mark("results store checked")
        if remote is not None:
            hits, got = _from_remote(remote, [t.key for t in tasks if t.key not in have], results, fetch)
            have |= got
    todo = [t for t in tasks if t.key not in have]
    cached = [t for t in tasks if t.key in have]
    return tasks, todo, cached, damaged, remote, hits


def _plan_many(req: RunRequest, root: Path, job: Job, parts: dict[Any, Any], fetch: bool) -> _Planned:
    """The tasks of a large job (``plan_cache.MIN_TASKS`` or more) as columns: the keys come from
    the plan cache (or are hashed and kept there), the results store is searched with their raw
    bytes, and the tasks stay ``plan.TaskTable``s (no ``Task`` a task), the cached ones and those
    to compute, which ``prepare`` groups into shards by their columns (``table_by_symbol``)."""
    import numpy as np

    from backtest.run import plan_cache
    from backtest.store.results import ResultStore

    tasks = plan_cache.tasks(root, job, parts)
    mark(f"{len(tasks)} tasks planned")
    damaged: dict[str, str] = {}
    remote = remote_cache(req, root)
    hits = 0
    if req.force:
        have = np.zeros(len(tasks), dtype=bool)
    else:
        results = ResultStore(root)
        have, damaged = results.intact_raw(tasks.raw)
        mark("results store checked")
        if remote is not None and not have.all():
            missing = np.flatnonzero(~have).tolist()
            keys = tasks.keys()
            hits, got = _from_remote(remote, [keys[i] for i in missing], results, fetch)
            if got:
                have[[i for i in missing if keys[i] in got]] = True
    if not have.any():  # nothing stored (a first run): every task to compute
        return tasks, tasks, [], damaged, remote, hits
    todo = tasks.take(np.flatnonzero(~have).tolist())
    cached = tasks if have.all() else tasks.take(np.flatnonzero(have).tolist())
    return tasks, todo, cached, damaged, remote, hits


def table_by_symbol(job: Job, table: TaskTable) -> dict[str, Columns]:
    """A table's tasks as ``plan.shards_of_columns`` takes them, from its columns."""
    import numpy as np

    if not len(table):
        return {}
    sets = np.frombuffer(table.sets, dtype=np.int32)
    syms = np.frombuffer(table.syms, dtype=np.int32)
    warm = np.asarray(job.warmups, dtype=np.int64)[sets]
    # symbols in the order they first come, then warm-up, then the table's order
    present, first = np.unique(syms, return_index=True)
    rank = np.empty(int(present.max()) + 1, dtype=np.int64)
    rank[present] = np.argsort(np.argsort(first, kind="stable"), kind="stable")
    order = np.lexsort((warm, rank[syms]))  # (stable: the table's order within a warm-up)
    bounds = np.flatnonzero(np.diff(rank[syms][order])) + 1
    keys = np.empty(len(table), dtype=object)  # (NumPy's indexing of objects: a tenth of a list's)
    keys[:] = table.keys()
    params = np.empty(len(job.params_list), dtype=object)
    params[:] = job.params_list
    out = {}
    for rows in np.split(order, bounds):
        of = sets[rows]
        out[table.symbols[int(syms[rows[0]])]] = (keys[rows].tolist(), params[of].tolist(), warm[rows].tolist())
    return out


def _from_remote(remote: Any, missing: list[str], results: Any, fetch: bool) -> tuple[int, set[str]]:
    """(how many of ``missing`` the shared cache holds, the keys fetched from it into ``results``
    and found whole there): only counted unless ``fetch``."""
    if not missing:
        return 0, set()
    if not fetch:
        return sum(len(ks) for ks in remote.find(missing).values()), set()
    got, _ = results.intact(remote.pull(missing, results))
    mark(f"{len(got)} results fetched from the remote cache")
    return len(got), got


def _prepare_walk_forward(req: RunRequest, root: Path, text: str | None, job: Job, parts: dict[Any, Any], wf: Any,
                          store: Any, capacity: int, url: str, skipped: list[str], portfolio: bool,
                          grid: tuple[list[dict[str, Any]], list[int]], fetch: bool = True) -> Prepared:
    """``prepare`` for ``--walk-forward``/``--holdout``: every fold's in-sample tasks and the
    out-of-sample tasks of the folds whose in-sample results are stored; the rest of the
    out-of-sample tasks come during the run."""
    from backtest.run.walkforward import plan_walk_forward, stage2
    from backtest.store.results import ResultStore

    results = ResultStore(root)
    plan = plan_walk_forward(job, wf, store, results)
    remote = remote_cache(req, root)
    hits = 0
    if remote is not None and not req.force:
        # in-sample results fetched from the shared cache decide folds as stored ones do: plan again
        missing = [t.key for ts in plan.cells.values() for t in ts if t.key not in plan.stored]
        hits, got = _from_remote(remote, missing, results, fetch)
        if got:
            results = ResultStore(root)
            plan = plan_walk_forward(job, wf, store, results)
    tasks: dict[str, Task] = {}
    window_of: dict[str, Any] = {}
    windows = plan.train
    in_cells = {t.key for ts in plan.cells.values() for t in ts}
    for w in windows:
        for t in make_tasks(w.job, w.parts):
            if w.role == "train" and t.key not in in_cells:
                continue  # a symbol with no test window in this fold: its training is not needed
            tasks.setdefault(t.key, t)
            window_of.setdefault(t.key, w)
    for cell, t in plan.oos.items():
        tasks.setdefault(t.key, t)
        window_of.setdefault(t.key, plan.test[cell[1]])
    # the in-sample files were checked by planning; the others (decided out-of-sample tasks) now
    have: set[str] = set()
    damaged: dict[str, str] = {}
    if not req.force:
        have, damaged = results.intact([k for k in tasks if k not in in_cells])
        have |= set(plan.stored) & set(tasks)
        damaged.update(plan.damaged)
        if remote is not None:  # out-of-sample tasks of the folds decided already
            more, got = _from_remote(remote, [k for k in tasks if k not in have and k not in in_cells], results, fetch)
            hits += more
            have |= got
    todo = [t for t in tasks.values() if t.key not in have]
    cached = [t for t in tasks.values() if t.key in have]
    shards = []
    for w in [*windows, *plan.test]:  # fold by fold: the first selections are known first
        mine = [t for t in todo if window_of[t.key] is w]
        if mine:
            shards += make_shards(w.job, mine, w.parts, capacity)
    remember_grid(req, root, text, job.strategy, *grid, portfolio)
    notes = [f"result {k[:12]} {why}: set aside, computed again" for k, why in sorted(damaged.items())]
    notes += plan.notes
    prep = Prepared(req, job, list(tasks.values()), cached, shards, skipped, url, root, parts, notes, remote=remote,
                    remote_hits=hits)
    prep.wfo = plan
    prep.stage2 = stage2(plan, have)
    prep.pending = plan.pending()
    return prep


def benchmark_of(req: RunRequest, store: Any, start_ns: int, end_ns: int) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The ``--benchmark`` symbol and the partitions of its bars over the range (and the bar
    before it); ("", ()) without one. An unknown symbol, or one with no bar in the range, is an
    error here."""
    if req.benchmark is None:
        return "", ()
    symbol = req.benchmark.strip().upper()
    if not symbol:
        raise UsageError("--benchmark is empty; give a symbol of the store, e.g. --benchmark SPY")
    return symbol, benchmark_parts(store, symbol, start_ns, end_ns)


def benchmark_parts(store: Any, symbol: str, start_ns: int, end_ns: int) -> tuple[tuple[str, str], ...]:
    """(path, sha256) of the partitions holding ``symbol``'s bars over [start_ns, end_ns] and the
    bar before it."""
    try:
        found = store.resolve(symbol, start_ns, end_ns, 1)
    except DataError as exc:
        raise DataError(f"--benchmark: {exc}" if str(exc).startswith("unknown symbol") else
                        f"--benchmark {symbol}: {exc}; choose another benchmark or range") from None
    return tuple((p.path, p.sha256) for p in found)


def universe_name(req: RunRequest, symbols: list[str]) -> str:
    """What a portfolio's tasks are filed under: the universe file's name (``sp100`` for
    ``--universe sp100.txt``), else its symbols joined by commas."""
    if req.universe is not None:
        return req.universe.stem or ",".join(symbols)
    return ",".join(symbols)


def fetch_data(prep: Prepared) -> None:
    """With the bars on an object store: fetch the partitions the run's workers will read into the
    bars cache (verified by content hash) before they start. Walk-forward runs plan tasks as they
    go, so all their partitions are fetched. Executors whose workers keep their own copies
    (``executors.workers_read_here``: SSH hosts) fill them themselves."""
    from backtest.data import Store
    from backtest.executors import workers_read_here

    store = Store(prep.root)
    if not store.remote or not (prep.shards or prep.pending) or not workers_read_here(prep.executor_url):
        return
    files: set[tuple[str, str]] = set()
    if prep.pending:
        files.update((p, h) for fs in prep.parts.values() for p, h in fs)
    for shard in prep.shards:
        files.update(shard.spec.partitions())
    mark("fetching data")
    store.fetch(sorted(files))


@contextmanager
def objects_that_stay() -> Iterator[None]:
    """Planning makes objects that all live as long as the run (tasks, their keys, shards: a few
    million for a million tasks). Python's cyclic garbage collector runs every 700 new objects
    and scans the older ones ever more often as they pile up: half the time of planning a
    million tasks (7.5 s, 3.8 s without it). It is off while planning, and what exists after is
    frozen (``gc.freeze``: never scanned again), which spares the run's collections too. The
    command line plans in it; a notebook's objects are not frozen."""
    import gc

    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def prepare_started(req: RunRequest, root: Path | None = None) -> tuple[Prepared, Executor | None]:
    """``prepare``, with the workers started meanwhile when work is likely (a first run of this
    strategy, or ``--force``); they are stopped again if the input is bad or nothing is missing.
    A rerun of a known grid plans first (in well under a second) and starts workers only for what
    is missing. The strategy file is read once, here."""
    from backtest.executors import discard_preloaded

    mark("planning")
    root = root or paths.root()
    text = req.read_source()
    ex = start_early(req, root, text) if req.force or not grid_cached(req, root, text) else None
    try:
        prep = prepare(req, root, text)
        fetch_data(prep)
    except BaseException:
        if ex is not None:
            ex.close(cancel=True)
        discard_preloaded()
        raise
    if not prep.shards:
        if ex is not None:
            ex.close(cancel=True)
            ex = None
        discard_preloaded()
    return prep, ex

"""A walk-forward run, planned and driven: every backtest is an ordinary content-hashed task.

Planning (``plan_walk_forward``) makes, for each fold, the in-sample tasks a plain
``bt run --from TRAIN_FROM --to TRAIN_TO`` would plan (same keys, same bits) and, where a fold's
in-sample results are all stored already, its out-of-sample task: the one
``bt run --from TEST_FROM --to TEST_TO --param <chosen>`` would plan. Nothing else: appending a
year of data adds exactly one fold's work.

During the run, ``Stage2.outcome`` takes every in-sample outcome; once a (symbol, fold) has all of
its in-sample outcomes, its parameters are chosen (``walkforward.choose``) and its out-of-sample
task is handed back to the runner at once, so the second stage starts fold by fold, not after
every fold. Everything is keyed as usual: an interrupted run resumes from what is stored, a new
``--select`` computes only the out-of-sample tasks whose choice changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from backtest.errors import DataError, PlanError
from backtest.plan import make_tasks
from backtest.spec import Job, Task
from backtest.walkforward import Fold, WalkForward, choose, fmt_day, make_folds

Parts = dict[tuple[str, int], list[tuple[str, str]]]
Cell = tuple[str, int]  # (symbol or universe name, fold index)


@dataclass
class Window:
    """One date range of the plan: its job (every parameter set) and the partitions it reads."""

    role: str  # train or test
    fold: int
    job: Job
    parts: Parts

    def to_json(self) -> dict[str, Any]:
        return {"role": self.role, "fold": self.fold, "start_ns": self.job.start_ns, "end_ns": self.job.end_ns,
                "symbols": self.job.symbols, "parts": [[s, w, files] for (s, w), files in self.parts.items()],
                **({"benchmark_parts": self.job.benchmark_parts} if self.job.benchmark else {})}

    def task_for(self, symbol: str, index: int) -> Task | None:
        """The task of parameter set ``index`` on ``symbol`` (or the universe) in this window."""
        one = replace(self.job, params_list=[self.job.params_list[index]], warmups=[self.job.warmups[index]],
                      symbols=self.job.symbols if self.job.universe else [symbol])
        tasks = make_tasks(one, self.parts)
        return tasks[0] if tasks else None


@dataclass
class WfoPlan:
    wf: WalkForward
    folds: list[Fold]
    train: list[Window]
    test: list[Window]
    #: each (symbol, fold)'s in-sample tasks, in grid order (index = parameter set)
    cells: dict[Cell, list[Task]]
    #: the chosen parameter set of each decided (symbol, fold), None when no set was eligible
    chosen: dict[Cell, int | None] = field(default_factory=dict)
    oos: dict[Cell, Task] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: the in-sample results stored before the run (key → outcome), read once at planning, and
    #: what was wrong with the stored in-sample files found damaged (set aside)
    stored: dict[str, tuple[dict[str, float] | None, float]] = field(default_factory=dict)
    damaged: dict[str, str] = field(default_factory=dict)

    def windows(self) -> list[Window]:
        return [*self.train, *self.test]

    def to_json(self) -> dict[str, Any]:
        return {**self.wf.to_json(), "folds": [f.to_json() for f in self.folds],
                "windows": [w.to_json() for w in self.windows()]}

    def pending(self) -> int:
        """Cells still waiting for their selection."""
        return len(self.cells) - len(self.chosen)


def _resolve(store: Any, symbols: Sequence[str], start_ns: int, end_ns: int, warmups: Sequence[int],
             portfolio: bool) -> tuple[Parts, list[str]]:
    """The partitions of each symbol with bars in the window (and the symbols without any)."""
    parts: Parts = {}
    missing = []
    for s in symbols:
        try:
            for w in sorted(set(warmups)):
                parts[(s, w)] = [(p.path, p.sha256) for p in store.resolve(s, start_ns, end_ns, w)]
        except DataError:
            missing.append(s)
            for w in set(warmups):
                parts.pop((s, w), None)
    if portfolio and missing:
        return {}, list(symbols)
    return parts, missing


def timeline(store: Any, symbols: Sequence[str], start_ns: int, end_ns: int) -> Any:
    """The sorted union of the symbols' bar times in [start_ns, end_ns] (for bar-count windows)."""
    from backtest.engine.universe import union_times

    chunks = []
    for s in symbols:
        for p in store.partitions(s):
            if p.last_ts >= start_ns and p.first_ts <= end_ns:
                ts = store._ts(p)
                chunks.append(ts[(ts >= start_ns) & (ts <= end_ns)])
    return union_times(chunks)


def data_span(store: Any, symbols: Sequence[str]) -> tuple[int, int]:
    """The first and last bar time over ``symbols``."""
    firsts, lasts = [], []
    for s in symbols:
        ps = store.partitions(s)
        firsts.append(ps[0].first_ts)
        lasts.append(ps[-1].last_ts)
    return min(firsts), max(lasts)


def plan_walk_forward(base: Job, wf: WalkForward, store: Any, results: Any) -> WfoPlan:
    """The walk-forward plan of ``base`` (the job of the whole range, with its symbols and grid).
    ``results``: the results store (in-sample results found there decide their folds now)."""
    portfolio = bool(base.universe)
    start_ns, end_ns = base.start_ns, base.end_ns
    line = timeline(store, base.symbols, start_ns, end_ns) if wf.train is not None and wf.train.unit == "b" else None
    folds = make_folds(wf, start_ns, end_ns, line)
    plan = WfoPlan(wf, folds, [], [], {})
    if len(base.params_list) == 1:
        plan.notes.append("one parameter set: every fold keeps it, so this is a plain out-of-sample evaluation")

    def window(role: str, fold: int, lo: int, hi: int) -> Window:
        parts, missing = _resolve(store, base.symbols, lo, hi, base.warmups, portfolio)
        present = [s for s in base.symbols if s not in missing]
        if missing:
            what = "the universe" if portfolio else ", ".join(missing)
            plan.notes.append(f"{what}: no bars in the {role} window {fmt_day(lo)}..{fmt_day(hi)}"
                              + f" of fold {fold + 1}; left out there")
        bench: tuple[tuple[str, str], ...] = ()
        if base.benchmark and (present if not portfolio or not missing else []):
            from backtest.run.prepare import benchmark_parts

            bench = benchmark_parts(store, base.benchmark, lo, hi)
        job = replace(base, symbols=present if not portfolio or not missing else [], start_ns=lo, end_ns=hi,
                      benchmark_parts=bench)
        return Window(role, fold, job, parts)

    for f in folds:
        train = window("train", f.index, f.train_from, f.train_to)
        test = window("test", f.index, f.test_from, f.test_to)
        plan.train.append(train)
        plan.test.append(test)
        if not test.job.symbols:
            continue
        by_symbol: dict[str, list[Task]] = {}
        for t in make_tasks(train.job, train.parts):
            by_symbol.setdefault(t.symbol, []).append(t)
        tested = set(test.job.task_symbols())
        for symbol, tasks in by_symbol.items():
            if symbol in tested and len(tasks) == len(base.params_list):
                plan.cells[(symbol, f.index)] = tasks
    if not plan.cells:
        raise PlanError("no fold has bars in both its train and its test window for any symbol; check --from/--to "
                        "and the windows")
    # folds whose in-sample results are all stored are decided now
    keys = [t.key for ts in plan.cells.values() for t in ts]
    have, plan.damaged = results.intact(keys)
    plan.stored = {key: stored_outcome(results, key) for key in keys if key in have}
    for cell in plan.cells:
        decide(plan, cell, plan.stored)
    return plan


def stored_outcome(results: Any, key: str) -> tuple[dict[str, float], float]:
    from backtest.store.results import decode_metrics

    header, metrics = decode_metrics(results.read_bytes(key))
    return metrics, float(header["n_trades"])


def decide(plan: WfoPlan, cell: Cell, outcomes: dict[str, tuple[dict[str, float] | None, float]]) -> Task | None:
    """Choose the parameters of ``cell`` if all its in-sample outcomes are in; its out-of-sample
    task (None when not decided yet, or when no set was eligible)."""
    if cell in plan.chosen:
        return plan.oos.get(cell)
    tasks = plan.cells[cell]
    if not all(t.key in outcomes for t in tasks):
        return None
    index = choose([outcomes[t.key] for t in tasks], plan.wf.select, plan.wf.min_trades)
    plan.chosen[cell] = index
    if index is None:
        plan.notes.append(f"{cell[0]} fold {cell[1] + 1}: no parameter set is eligible (by {plan.wf.select}"
                          + (f", at least {plan.wf.min_trades} trades" if plan.wf.min_trades else "")
                          + "): no out-of-sample test")
        return None
    task = plan.test[cell[1]].task_for(cell[0], index)
    if task is not None:
        plan.oos[cell] = task
    return task


class Stage2:
    """Takes in-sample outcomes as they come and hands back out-of-sample tasks once a fold's
    selection is known."""

    def __init__(self, plan: WfoPlan) -> None:
        self.plan = plan
        self.cell_of = {t.key: cell for cell, ts in plan.cells.items() for t in ts if cell not in plan.chosen}
        self.outcomes: dict[str, tuple[dict[str, float] | None, float]] = {}

    def outcome(self, key: str, metrics: dict[str, float] | None, n_trades: float) -> Task | None:
        """An in-sample task's outcome (``metrics`` None: it failed); the out-of-sample task its
        fold now needs, if this decided the fold."""
        cell = self.cell_of.pop(key, None)
        if cell is None:
            return None
        self.outcomes[key] = (metrics, n_trades)
        return decide(self.plan, cell, self.outcomes)


def stage2(plan: WfoPlan, cached_keys: set[str]) -> Stage2:
    """The driver of a run's second stage; in-sample results stored before the run (and not
    recomputed: ``cached_keys``) count as in, with the outcomes planning read."""
    driver = Stage2(plan)
    for cell, tasks in plan.cells.items():
        if cell in plan.chosen:
            continue
        for t in tasks:
            if t.key in cached_keys and t.key in plan.stored:
                driver.outcomes[t.key] = plan.stored[t.key]
                driver.cell_of.pop(t.key, None)
    return driver


def describe(plan: WfoPlan) -> str:
    """One line on the plan, for the user."""
    wf = plan.wf
    kind = f"holdout from {wf.holdout}" if wf.holdout else (
        f"walk-forward train={wf.train}, test={wf.test}, step={wf.step}{', anchored' if wf.anchored else ''}")
    return f"{kind}: {len(plan.folds)} folds, selecting by {wf.select}"

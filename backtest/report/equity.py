"""Equity curves, re-derived: a task's curve is not stored, so it is computed again from the run's
saved strategy source, job and data, in this process, the same way a worker computed the result.

The re-derived final equity must equal the stored ``final_equity`` metric bit for bit; if it does
not, the curve is refused (``ReproducibilityError``): the run cannot be reproduced as recorded, and
``bt verify`` tells which tasks differ. That makes every chart a reproducibility check for free.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backtest.errors import BtError, DataError


class ReproducibilityError(BtError):
    """A task computed again does not give its stored result."""

    exit_code = 1


@dataclass
class Curve:
    """One task's path through its bars, from the first bar of the date range on."""

    key: str
    symbol: str
    params: dict[str, Any]
    ts: np.ndarray  # int64 UTC ns of each bar
    equity: np.ndarray  # marked to each bar's close
    drawdown: np.ndarray  # equity / its running maximum − 1 (≤ 0)
    position: np.ndarray  # signed units held at each bar's close (a portfolio: its gross exposure)
    close: np.ndarray  # a portfolio: its universe's equal-weight index
    buy_hold: np.ndarray  # the starting cash held in the symbol from the first bar's close, no costs
    trades: np.ndarray  # ``TRADE_DTYPE`` rows; indices are into ``ts`` (not the warm-up)
    metrics: dict[str, float]
    #: the run's benchmark (``--benchmark``) held from the starting cash: its value at each bar
    #: (NaN before its first close), or None
    bench: np.ndarray | None = None
    #: every trade's (mae, mfe), in the stored result's order (a portfolio's ``trades`` is empty)
    excursions: np.ndarray | None = None


def positions(trades: np.ndarray, n: int, offset: int = 0) -> np.ndarray:
    """Signed units held at each of ``n`` bars' closes, from trade lots whose bar indices are
    ``offset`` more than the output's: a lot counts from its entry bar on, and up to (not at) its
    exit bar, or to the end while it is still open."""
    delta = np.zeros(n + 1)
    signed = trades["side"].astype(np.float64) * trades["size"]
    np.add.at(delta, np.clip(trades["entry_index"] - offset, 0, n), signed)
    closed = trades["closed"]
    np.add.at(delta, np.clip(trades["exit_index"][closed] - offset, 0, n), -signed[closed])
    return np.cumsum(delta[:n])


def with_excursions(run: dict[str, Any], key: str, rows: list[dict[str, Any]],
                    records: Sequence[dict[str, Any]] | None = None, root: Path | None = None) -> str:
    """Fill the ``mae``/``mfe`` of the trade rows of task ``key`` (``report.trades_rows``'s): result
    files do not keep them (they follow exactly from the bars the key names), so the task is
    computed again, checked against its stored result. "" when done, else why not (the rows then
    keep None there)."""
    from backtest.errors import BtError

    try:
        (curve,) = curves(run, [key], root, records)
    except BtError as exc:
        return f"MAE/MFE not shown: {exc}"
    assert curve.excursions is not None
    for row, (mae, mfe) in zip(rows, curve.excursions.tolist(), strict=True):
        row["mae"], row["mfe"] = mae, mfe
    return ""


def held_from(closes: np.ndarray, cash: float) -> np.ndarray:
    """``cash`` held in the benchmark from its close before the first bar (else its first close
    after): its value at each bar, from ``closes`` = ``metrics.aligned_closes``."""
    known = closes[~np.isnan(closes)]
    if known.size == 0:
        return np.full(closes.size - 1, np.nan)
    return cash * closes[1:] / known[0]


def drawdown(equity: np.ndarray) -> np.ndarray:
    if equity.size == 0:
        return equity.copy()
    peak = np.maximum.accumulate(equity)
    with np.errstate(divide="ignore", invalid="ignore"):
        dd = np.where(peak > 0, equity / peak - 1.0, -1.0)
    return dd


def curves(run: str | dict[str, Any], keys: Sequence[str], root: Path | None = None,
           records: Sequence[dict[str, Any]] | None = None) -> list[Curve]:
    """The curves of a run's tasks named by ``keys`` (done tasks), in the order given. ``run`` is
    a run id or its catalog row; ``records`` (``backtest.report.task_records``'s), when the
    caller has them, save reading the run's tasks again.

    Raises ``DataError`` when the data the run read has changed or been removed since, and
    ``ReproducibilityError`` when a task's re-derived final equity differs from its stored one."""
    from backtest import paths
    from backtest.catalog import Catalog
    from backtest.data import Store
    from backtest.engine import SimSettings
    from backtest.plan import shard_of, task_index
    from backtest.store.archive import run_windows
    from backtest.store.results import ResultStore
    from backtest.worker.shard import Runner

    if not keys:
        return []
    root = root or paths.root()
    cat = Catalog(root / "catalog.duckdb")
    if isinstance(run, str):
        run = cat.run(run)
    windows = [(job, parts) for _, _, job, parts in run_windows(root, run)]
    job = windows[0][0]
    if records is None:
        records = [{**r, "params": json.loads(r["params"])} for r in cat.task_rows(run["run_id"])]
    rows = {r["key"]: r for r in records}
    missing = [k for k in keys if k not in rows or rows[k]["status"] != "done"]
    if missing:
        raise BtError(f"task {missing[0][:12]} is not a done task of run {run['run_id']}")
    index = task_index(windows)
    unplanned = [k for k in keys if k not in index]
    if unplanned:
        raise BtError(f"task {unplanned[0][:12]} is not planned by the recorded job of run {run['run_id']}; rerun the job")
    wanted_files = {f for k in keys for f in index[k][0].files(index[k][1], rows[k]["symbol"], index[k][2].warmup) or []}
    changed = Store(root).changed(job.symbols if job.universe else {rows[k]["symbol"] for k in keys}, wanted_files)
    if changed:
        raise DataError(f"the data of run {run['run_id']} changed since it ran, so its equity curves cannot be "
                        f"re-derived: {changed[0]}" + (f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""))
    runner = Runner(root)
    s = job.strategy
    runner.add_strategy({"hash": s.hash, "source": s.source, "filename": s.filename, "name": s.name})
    store = ResultStore(root)
    out: dict[str, Curve] = {}
    for k in dict.fromkeys(keys):
        r = rows[k]
        params = r["params"]
        wjob, wparts, task = index[k]
        shard = shard_of(wjob, r["symbol"], [task], wparts)
        ((key, bars, res),) = runner.replay(shard.spec)
        if isinstance(res, BaseException):
            raise ReproducibilityError(f"task {k[:12]} ({r['symbol']} {json.dumps(params)}) failed when computed again: {res}")
        want = store.read(k).metrics["final_equity"]
        got = float(res.equity[-1]) if res.equity.size else float(res.metrics["final_equity"])
        if np.float64(got).tobytes() != np.float64(want).tobytes():
            raise ReproducibilityError(
                f"task {k[:12]} ({r['symbol']} {json.dumps(params)}) computed again ends at equity {got!r}, but its stored "
                f"result says {want!r}; the run cannot be reproduced as recorded (bt verify {run['run_id']} lists "
                "every task that differs)")
        start = bars.start
        ts = np.asarray(bars.ts[start:])
        trades = res.trades.copy()
        trades["entry_index"] -= start
        trades["exit_index"] -= start
        cash = float(SimSettings(**job.settings).cash)
        if job.universe:
            close, held, trades = _portfolio_path(bars, trades, res.equity)
        else:
            close = np.asarray(bars.close[start:], dtype=np.float64)
            held = positions(trades, ts.size)
        bh = cash * close / close[0] if close.size else close
        out[k] = Curve(k, r["symbol"], params, ts, res.equity, drawdown(res.equity), held, close, bh, trades,
                       res.metrics, None if res.benchmark is None else held_from(res.benchmark, cash),
                       np.column_stack([res.trades["mae"], res.trades["mfe"]]))
    return [out[k] for k in keys]


def _portfolio_path(u: Any, trades: np.ndarray, equity: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A portfolio's curve in one-symbol terms: its "close" is the universe's equal-weight index
    (each symbol's last close over its first in the range, averaged over the symbols trading, ×
    100), its "position" the gross exposure (Σ |units · close| / equity), and no trade markers
    (its trades are listed, with their symbols, by ``bt report --trades``)."""
    from backtest.engine.universe import ffill

    last = ffill(u.close)[u.start:]
    n = last.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.array([col[~np.isnan(col)][0] if (~np.isnan(col)).any() else np.nan for col in last.T])
        index = 100.0 * np.nanmean(last / first, axis=1) if last.size else np.empty(0)
        gross = np.zeros(n)
        for j in range(last.shape[1]):
            mine = trades[trades["symbol_index"] == j]
            if mine.size:
                gross += np.abs(positions(mine, n) * np.nan_to_num(last[:, j]))
        exposure = np.where(equity > 0, gross / equity, np.nan) if equity.size == n else gross
    return index, exposure, trades[:0]


def equity_table(curve: Curve) -> Any:
    """A curve as a pyarrow Table: ``ts`` (timestamp[ns, UTC]), ``equity``, ``drawdown``, ``position``."""
    import pyarrow as pa

    return pa.table({
        "ts": pa.array(curve.ts, pa.timestamp("ns", tz="UTC")),
        "equity": pa.array(curve.equity, pa.float64()),
        "drawdown": pa.array(curve.drawdown, pa.float64()),
        "position": pa.array(curve.position, pa.float64()),
    })  # fmt: skip

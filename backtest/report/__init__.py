"""Reports on a run: the rows of the output contract, exports, and rich renderables for the terminal.

Only this module and ``backtest.cli`` import rich; the functions that build rows and
exports do not, so notebooks can use them without a terminal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backtest import paths
from backtest.catalog import METRICS, OPTIONAL_METRICS, Catalog
from backtest.errors import UsageError, did_you_mean
from backtest.walkforward import LOWER_IS_BETTER

KEY_METRICS = ("total_return", "sharpe", "max_drawdown", "trades", "win_rate")
TRADE_COLUMNS = ("entry_time", "exit_time", "side", "size", "entry_price", "exit_price", "pnl", "return", "fees", "bars",
                 "mae", "mfe")


def _catalog(root: Path | None) -> Catalog:
    return Catalog((root or paths.root()) / "catalog.duckdb")


def _clean(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


def task_records(run_id: str, root: Path | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The run row and one record per task: {key, symbol, params, status, metrics, ...}."""
    cat = _catalog(root)
    run = cat.run(run_id)
    out = []
    for r in cat.task_rows(run["run_id"]):
        rec = {
            "key": r["key"],
            "symbol": r["symbol"],
            "params": json.loads(r["params"]),
            "status": r["status"],
            "metrics": _metrics_of(r) if r["status"] == "done" else {},
        }
        if r["status"] == "failed":
            rec["error"] = r["error"]
        rec["cached"] = bool(r["cached"])
        out.append(rec)
    return run, out


def _metrics_of(row: dict[str, Any]) -> dict[str, Any]:
    """A done task's metrics: every ``METRICS`` name, and the optional ones it has (``orders``)."""
    out = {m: _clean(row[m]) for m in METRICS}
    out.update((m, _clean(row[m])) for m in OPTIONAL_METRICS if row.get(m) is not None)
    return out


def contract_row(r: dict[str, Any]) -> dict[str, Any]:
    """One task's object in the output contract."""
    row = {"key": r["key"], "symbol": r["symbol"], "params": r["params"], "status": r["status"],
           "metrics": r["metrics"]}
    if "eligible" in r:
        row["eligible"] = r["eligible"]
    if "error" in r:
        row["error"] = r["error"]
    return row


def contract_json(records: Sequence[dict[str, Any]]) -> str:
    """The output contract: one JSON array, one object per task."""
    return json.dumps([contract_row(r) for r in records], allow_nan=False)


def flat_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    names = sorted({k for r in records for k in r["params"]})
    extra = [m for m in OPTIONAL_METRICS if any(m in r["metrics"] for r in records)]  # a portfolio's orders
    rows = []
    for r in records:
        row: dict[str, Any] = {"key": r["key"], "symbol": r["symbol"], "status": r["status"]}
        for n in names:
            row[f"param_{n}"] = r["params"].get(n)
        for m in (*METRICS, *extra):
            row[m] = r["metrics"].get(m)
        if "eligible" in r:
            row["eligible"] = r["eligible"]
        row["error"] = r.get("error")
        rows.append(row)
    return rows


def load_run(run_id: str, root: Path | str | None = None, *, symbols: Any = None,
             params: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
             status: str | None = None, sort: str = "sharpe") -> Any:
    """A run's per-task results as a pyarrow Table (``.to_pandas()`` for a DataFrame), best
    ``sort`` first. The filters are applied by the catalog (DuckDB) before any row is read:
    ``symbols`` (a name or names), ``params`` (name → a value, a list of values or a ``(low,
    high)`` range), ``metrics`` (name → ``(low, high)``; ``None`` for an open end), ``status``."""
    import pyarrow as pa

    from backtest.report.stream import filters, ranked_rows

    check_sort(sort)
    cat = _catalog(Path(root) if root else None)
    run = cat.run(run_id)
    rows: list[dict[str, Any]] = []
    for batch in ranked_rows(cat, run["run_id"], sort, None, filters(symbols, params, metrics, status)):
        rows.extend(flat_rows(batch))
    return pa.Table.from_pylist(rows)


def load_equity(run_id: str, symbol: str, params: dict[str, Any] | None = None,
                root: Path | str | None = None) -> Any:
    """One task's equity curve as a pyarrow Table (``ts``, ``equity``, ``drawdown``, ``position``).

    The curve is computed again from the run's saved source, parameters and data; its last equity
    is checked bit for bit against the stored result (``ReproducibilityError`` if it differs).
    ``params`` must pick exactly one task of ``symbol``: give every parameter that varies."""
    from backtest.errors import BtError
    from backtest.report.equity import curves, equity_table
    from backtest.worker import tuning

    where = Path(root) if root else None
    run, records = task_records(run_id, where)
    text = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in (params or {}).items()}
    chosen = select_task(records, symbol, text)
    if len(chosen) != 1:
        raise BtError(f"symbol {symbol} and parameters {params or {}} select {len(chosen)} tasks of run "
                      f"{run['run_id']}; give every parameter that varies, to select one")
    if chosen[0]["status"] != "done":
        raise BtError(f"that task failed in run {run['run_id']}; it has no equity curve")
    tuning.warm_up()
    (curve,) = curves(run, [chosen[0]["key"]], where, records)
    return equity_table(curve)


def check_sort(metric: str, flag: str = "--sort") -> str:
    if metric not in METRICS:
        raise UsageError(f'unknown metric "{metric}" for {flag}.{did_you_mean(metric, METRICS)} Known: {", ".join(METRICS)}')
    return metric


def ranked(records: Sequence[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Done tasks, best first by ``metric`` (missing values last); tasks marked not eligible
    (``mark_eligible``) after every eligible one."""
    sign = 1 if metric in LOWER_IS_BETTER else -1
    done = [r for r in records if r["status"] == "done"]
    return sorted(done, key=lambda r: (r.get("eligible") is False, r["metrics"].get(metric) is None,
                                       sign * (r["metrics"].get(metric) or 0.0)))


def check_min_trades(min_trades: int | None) -> int | None:
    if min_trades is not None and min_trades < 0:
        raise UsageError(f"--min-trades must be 0 or more, not {min_trades}")
    return min_trades or None


def mark_eligible(records: Sequence[dict[str, Any]], min_trades: int | None) -> None:
    """With ``min_trades``: each done task's ``eligible`` — whether it made at least that many
    trades. The others stay in every table and export, flagged, ranked after the eligible ones."""
    if not min_trades:
        return
    for r in records:
        if r["status"] == "done":
            r["eligible"] = (r["metrics"].get("trades") or 0) >= min_trades


def best_per_symbol(records: Sequence[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    best: dict[str, dict[str, Any]] = {}
    for r in ranked(records, metric):
        best.setdefault(r["symbol"], r)
    return [best[s] for s in sorted(best)]


def summary(records: Sequence[dict[str, Any]]) -> list[tuple[str, list[float | None]]]:
    """Per key metric: min, 25 %, median, 75 %, max over done tasks."""
    import numpy as np

    out: list[tuple[str, list[float | None]]] = []
    for m in KEY_METRICS:
        vals = np.array([r["metrics"][m] for r in records if r["status"] == "done" and r["metrics"].get(m) is not None])
        if vals.size:
            q = np.quantile(vals, [0, 0.25, 0.5, 0.75, 1.0])
            out.append((m, [float(x) for x in q]))
        else:
            out.append((m, [None] * 5))
    return out


def parse_params_filter(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        k, sep, v = part.partition("=")
        if not sep or not k.strip():
            raise UsageError(f'--params "{text}" must look like name=value,name=value')
        out[k.strip()] = v.strip()
    return out


def _typed(text: str, like: Any) -> Any:
    """``text`` read as the type of a stored value ``like``: 70 matches 70.0, true matches True."""
    if isinstance(like, bool):
        low = text.lower()
        return True if low in ("true", "1", "yes") else False if low in ("false", "0", "no") else text
    if isinstance(like, int | float):
        try:
            return float(text)
        except ValueError:
            return text
    return text


def select_task(records: Sequence[dict[str, Any]], symbol: str | None, params: dict[str, str]) -> list[dict[str, Any]]:
    """Tasks matching --symbol and --params. Values are compared as the run stored them: numbers
    as numbers (``rsi_max=70`` matches 70.0), booleans as true/false, text as text."""
    if params:
        known = list(dict.fromkeys(k for r in records for k in r["params"]))
        for k in params:
            if k not in known:
                raise UsageError(f'unknown parameter "{k}" in --params.{did_you_mean(k, known)}')

    out = []
    for r in records:
        if symbol and r["symbol"].upper() != symbol.upper():
            continue
        if params and not matches(r["params"], params):
            continue
        out.append(r)
    return out


def matches(stored_params: dict[str, Any], wanted: dict[str, str]) -> bool:
    """Whether a task's parameters have the ``--params`` values ``wanted`` (compared as stored)."""

    def same(stored: Any, text: str) -> bool:
        want = _typed(text, stored)
        if isinstance(stored, bool) or not isinstance(stored, int | float):
            return bool(stored == want) if isinstance(stored, bool) else str(stored) == text
        return isinstance(want, float) and float(stored) == want

    return all(k in stored_params and same(stored_params[k], v) for k, v in wanted.items())


def format_time(ns: int, tz: str = "UTC", seconds: bool = False) -> str:
    """``2020-03-02 14:31`` (or with seconds) in ``tz``; ISO 8601 with its offset for files."""
    import datetime as dt

    stamp = dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.UTC).replace(microsecond=(ns // 1000) % 1_000_000)
    if tz != "UTC":
        from zoneinfo import ZoneInfo

        stamp = stamp.astimezone(ZoneInfo(tz))
    return stamp.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def _iso(ns: int, tz: str) -> str:
    import datetime as dt

    stamp = dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.UTC)
    if tz != "UTC":
        from zoneinfo import ZoneInfo

        stamp = stamp.astimezone(ZoneInfo(tz))
        return stamp.isoformat()
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


def trades_rows(key: str, root: Path | None = None, tz: str = "UTC") -> list[dict[str, Any]]:
    """One row per trade of a stored result; times as ISO 8601 (UTC ``Z``, or ``tz``'s offset)."""
    from backtest.store.results import ResultStore

    rec = ResultStore(root or paths.root()).read(key)
    t = rec.trades
    names = rec.trade_symbols() if rec.symbols else None
    rows = []
    for i in range(t.shape[0]):
        row: dict[str, Any] = {"symbol": names[i]} if names is not None else {}
        for c in TRADE_COLUMNS:
            v = t[c][i]
            if c.endswith("_time"):
                row[c] = _iso(int(v), tz)
            elif c == "side":
                row[c] = "long" if v > 0 else "short"
            else:
                row[c] = None if v != v else v.item()  # NaN: MAE/MFE, not stored (equity.with_excursions)
        rows.append(row)
    return rows


def portfolio_contrib(records: Sequence[dict[str, Any]], sort: str) -> list[dict[str, Any]] | None:
    """For the records of a portfolio run (its tasks count ``orders``): the PnL by symbol of the
    best task by ``sort``; None for a run of one-symbol tasks."""
    best = ranked(records, sort)
    if not best or "orders" not in best[0]["metrics"]:
        return None
    return contributions(best[0]["key"])


def contributions(key: str, root: Path | None = None) -> list[dict[str, Any]]:
    """A portfolio task's PnL by symbol, in universe order: {symbol, pnl, share (of the task's
    whole PnL), trades, fees}. Every cash flow of a portfolio is in some trade (costs included,
    open positions marked to the last close), so the pnl adds up to final equity − cash."""
    from backtest.store.results import ResultStore

    rec = ResultStore(root or paths.root()).read(key)
    if not rec.symbols:
        return []
    t = rec.trades
    total = float(t["pnl"].sum())
    out = []
    for j, sym in enumerate(rec.symbols):
        mine = t[t["symbol_index"] == j]
        pnl = float(mine["pnl"].sum())
        out.append({"symbol": sym, "pnl": pnl, "share": pnl / total if total else None, "trades": int(mine.shape[0]),
                    "fees": float(mine["fees"].sum())})
    return out


def write_table(table: Any, fmt: str, out: Path | None) -> str | None:
    """A pyarrow Table as csv / json (one object per row) / parquet; text for stdout when ``out`` is None."""
    if fmt == "parquet":
        if out is None:
            raise UsageError("--format parquet needs --out FILE")
        import pyarrow.parquet as pq

        pq.write_table(table, out)
        return None
    if fmt == "json":
        import pyarrow as pa

        cols = {n: (table[n].cast(pa.int64()).to_pylist() if n == "ts" else table[n].to_pylist())
                for n in table.column_names}
        times = [_iso_ns(v) for v in cols.pop("ts")] if "ts" in cols else []
        rows = [{"ts": t, **{k: _clean(v[i]) for k, v in cols.items()}} for i, t in enumerate(times)]
        text = json.dumps(rows, allow_nan=False)
    elif fmt == "csv":
        import io

        import pyarrow.csv as pacsv

        buf = io.BytesIO()
        pacsv.write_csv(table, buf)
        text = buf.getvalue().decode()
    else:
        raise UsageError(f'unknown format "{fmt}"; use table, csv, json or parquet')
    if out is not None:
        out.write_text(text)
        return None
    return text


def _iso_ns(ns: int) -> str:
    import numpy as np

    return str(np.datetime64(int(ns), "ns")) + "Z"


def write_rows(rows: Sequence[dict[str, Any]], fmt: str, out: Path | None) -> str | None:
    """csv / parquet / json of flat rows; returns text for stdout when ``out`` is None (csv, json)."""
    if fmt == "json":
        text = json.dumps([{k: _clean(v) for k, v in r.items()} for r in rows], allow_nan=False)
        if out is not None:
            out.write_text(text)
            return None
        return text
    import pyarrow as pa

    return write_table(pa.Table.from_pylist(list(rows)) if rows else pa.table({}), fmt, out)


# rich renderables -------------------------------------------------------------------------------


#: metrics shown as percentages
PERCENT_METRICS = ("total_return", "cagr", "volatility", "max_drawdown", "exposure", "win_rate", "best_trade",
                   "worst_trade", "avg_trade", "buy_and_hold_return", "avg_drawdown", "avg_win", "avg_loss",
                   "exposure_adjusted_return", "alpha", "tracking_error", "benchmark_return")


def _fmt(metric: str, v: Any) -> str:
    if v is None:
        return "–"
    if metric in ("trades", "max_drawdown_duration", "orders", "max_consecutive_wins", "max_consecutive_losses",
                  "max_trade_duration"):
        return f"{v:,.0f}"
    if metric in PERCENT_METRICS:
        return f"{v * 100:.2f}%"
    if metric == "final_equity":
        return f"{v:,.2f}"
    return f"{v:.3f}"


def _params_text(p: dict[str, Any], only: set[str] | None = None) -> str:
    return " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in p.items()
                    if only is None or k in only)


def _varying(records: Sequence[dict[str, Any]]) -> set[str]:
    """Parameters that take more than one value in these records (the others are noise in a table)."""
    seen: dict[str, set[str]] = {}
    for r in records:
        for k, v in r["params"].items():
            seen.setdefault(k, set()).add(repr(v))
    return {k for k, vs in seen.items() if len(vs) > 1} or set(seen)


def run_facts(run: dict[str, Any], root: Path | None = None, tz: str = "UTC") -> list[tuple[str, str]]:
    """What a run ran, as (label, text) lines: symbols, date range, grid, settings. Empty when the
    run's job file is gone (the results are still shown)."""
    from backtest.errors import BtError
    from backtest.store.archive import load_job

    try:
        job = load_job(root or paths.root(), run)
    except BtError:
        return []
    settings = json.loads(run.get("settings") or "{}")
    syms = job["symbols"]
    universe = job.get("universe")
    start, end = job["start_ns"], job["end_ns"]
    when = (format_time(start, tz)[:10] if start > 0 else "the first bar",
            format_time(end, tz)[:10] if end < 2**63 - 1 else "the last bar")
    cost = []
    if settings.get("commission"):
        cost.append(f"commission {settings['commission'] * 100:g}%")
    if settings.get("fee"):
        cost.append(f"fee {settings['fee']:g}")
    if settings.get("slippage"):
        cost.append(f"slippage {settings['slippage'] * 100:g}%")
    stops = [f"{n} {settings[k] * 100:g}%" for n, k in (("stop", "stop_loss"), ("target", "take_profit"),
                                                         ("trailing stop", "trailing_stop")) if settings.get(k)]
    if settings.get("leverage"):
        stops.append(f"leverage {settings['leverage']:g}")
    listed = f"{len(syms)}: " + ", ".join(syms[:12]) + (f" and {len(syms) - 12} more" if len(syms) > 12 else "")
    return [
        ("portfolio of" if universe else "symbols", listed),
        ("range", f"{when[0]} to {when[1]}"),
        ("grid", f"{len(job['params'])} parameter sets"),
        ("settings", ", ".join([f"cash {settings.get('cash', 0):,.0f}", *(cost or ["no costs"]),
                                f"fill {str(settings.get('fill', '')).replace('_', '-')}",
                                f"{settings.get('units', '')} units", *stops])),
        *([("benchmark", job["benchmark"][0])] if job.get("benchmark") else []),
        *([("grid axes", ", ".join(job["axes"]))] if job.get("axes") else []),
    ]


@dataclass
class RunView:
    """What the run's tables show, gathered from task records (``view_of``) or by the catalog
    itself (``stream.catalog_view``, for runs too large to load)."""

    shown: int  # tasks considered (all of the run, or those a filter kept)
    done: int
    cached: int
    failed: int
    vary: set[str]
    fixed: dict[str, Any]
    top: list[dict[str, Any]]  # the best ``top`` done tasks, best first
    best: list[dict[str, Any]]  # each symbol's best done task, by symbol
    summary: list[tuple[str, list[float | None]]]
    failures: list[dict[str, Any]]  # the first failed tasks (20 at most)


def view_of(records: Sequence[dict[str, Any]], sort: str, top: int) -> RunView:
    done = [r for r in records if r["status"] == "done"]
    failed = [r for r in records if r["status"] == "failed"]
    vary = _varying(records)
    fixed = {k: v for k, v in (records[0]["params"].items() if records else ()) if k not in vary}
    return RunView(len(records), len(done), sum(r["cached"] for r in done), len(failed), vary, fixed,
                   ranked(records, sort)[:top], best_per_symbol(records, sort), summary(records), failed[:20])


def render_run(run: dict[str, Any], records: Sequence[dict[str, Any]], sort: str, top: int,
               tz: str = "UTC", total: int | None = None, facts: Sequence[tuple[str, str]] = (),
               contrib: Sequence[dict[str, Any]] | None = None) -> Any:
    """The run's tables. ``records`` may be a filtered part of the run (``total``: how many
    tasks the run recorded in all, so that filtered-out tasks are not counted as not run).
    ``contrib``: for a portfolio run, the best set's PnL by symbol (``contributions``); its
    leaderboard then ranks parameter sets, and this table replaces "best per symbol"."""
    return render_view(run, view_of(records, sort, top), sort, top, total, facts, contrib)


def render_view(run: dict[str, Any], view: RunView, sort: str, top: int, total: int | None = None,
                facts: Sequence[tuple[str, str]] = (), contrib: Sequence[dict[str, Any]] | None = None) -> Any:
    """``render_run`` from a ``RunView``."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    recorded = view.shown if total is None else total
    pending = int(run["tasks"] or 0) - recorded
    head = Text.assemble(
        (f"run {run['run_id']}", "bold"), f"  {run['strategy']}  ", (run["status"], _status_style(run["status"])),
        f"  {view.done} done ({view.cached} cached), {view.failed} failed",
        f", {pending} not run" if pending > 0 else "",
        f" (showing {view.shown} of {recorded})" if view.shown != recorded else "",
    )
    for label, text in facts:
        head.append(f"\n{label}: {text}", style="dim")
    vary, fixed = view.vary, view.fixed
    if fixed:
        head.append(f"\nfixed: {_params_text(fixed)}", style="dim")
    portfolio = contrib is not None
    cols = (*(() if portfolio else ("symbol",)), "params", *dict.fromkeys((sort, *KEY_METRICS)),
            *(("orders",) if portfolio else ()))
    board = Table(title=f"top {min(top, view.done)} {'parameter sets ' if portfolio else ''}by {sort}",
                  title_justify="left")
    for c in cols:
        board.add_column(c, justify="left" if c in ("symbol", "params") else "right",
                         overflow="fold", no_wrap=c not in ("params",))
    lead = 0 if portfolio else 1
    for r in view.top:
        board.add_row(*([] if portfolio else [r["symbol"]]), _params_text(r["params"], vary) + _flag(r),
                      *(_fmt(m, r["metrics"].get(m)) for m in cols[lead + 1:]),
                      style="dim" if r.get("eligible") is False else None)
    if portfolio:
        first = view.top[:1]
        about = f" of the best set, {_params_text(first[0]['params'], vary)}" if first else ""
        best = Table(title=f"PnL by symbol{about}", title_justify="left")
        for c in ("symbol", "pnl", "share", "trades", "fees"):
            best.add_column(c, justify="left" if c == "symbol" else "right", no_wrap=True)
        for row in contrib or ():
            share = "–" if row["share"] is None else f"{row['share'] * 100:.1f}%"
            best.add_row(row["symbol"], f"{row['pnl']:,.2f}", share, str(row["trades"]), f"{row['fees']:,.2f}")
    else:
        best = Table(title=f"best parameters per symbol (by {sort})", title_justify="left")
        for c in ("symbol", "params", sort, "total_return", "buy_and_hold_return"):
            best.add_column(c, justify="left" if c in ("symbol", "params") else "right", overflow="fold",
                            no_wrap=c != "params")
        for r in view.best:
            best.add_row(r["symbol"], _params_text(r["params"], vary) + _flag(r), _fmt(sort, r["metrics"].get(sort)),
                         _fmt("total_return", r["metrics"].get("total_return")),
                         _fmt("buy_and_hold_return", r["metrics"].get("buy_and_hold_return")))
    for table, rows in ((board, view.top), (best, view.best)):
        if any(r.get("eligible") is False for r in rows):
            table.caption, table.caption_justify = FLAG_NOTE, "left"
    summ = Table(title=f"across {view.done} tasks", title_justify="left")
    for c in ("metric", "min", "25%", "median", "75%", "max"):
        summ.add_column(c, justify="left" if c == "metric" else "right", no_wrap=True)
    for m, q in view.summary:
        summ.add_row(m, *(_fmt(m, v) for v in q))
    parts: list[Any] = [head, board, best, summ]
    if view.failed:
        fail = Table(title=f"{view.failed} failed (bt logs {run['run_id']} for tracebacks)", title_justify="left")
        for c in ("symbol", "params", "error"):
            fail.add_column(c, overflow="fold")
        for r in view.failures:
            fail.add_row(r["symbol"], _params_text(r["params"], vary), r.get("error") or "")
        parts.append(fail)
    return Group(*parts)


def _flag(r: dict[str, Any]) -> str:
    return " *" if r.get("eligible") is False else ""


#: the caption of a table with tasks ``_flag`` marks
FLAG_NOTE = "* fewer trades than --min-trades: not eligible, ranked after the others"


def render_equity(rec: dict[str, Any], table: Any, tz: str = "UTC") -> Any:
    """An equity curve in the terminal: its first and last rows and the extremes."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    n = table.num_rows
    ts = table["ts"].cast("int64").to_numpy()
    eq = table["equity"].to_numpy()
    dd = table["drawdown"].to_numpy()
    pos = table["position"].to_numpy()
    t = Table(title=f"equity of {rec['symbol']} {_params_text(rec['params'])}: {n:,} bars", title_justify="left")
    for c in ("time", "equity", "drawdown", "position"):
        t.add_column(c, justify="right", no_wrap=True)
    rows = list(range(min(n, 5))) + ([-1] if n > 10 else []) + list(range(max(5, n - 5), n))
    for i in rows:
        if i < 0:
            t.add_row("...", "", "", "")
            continue
        t.add_row(format_time(int(ts[i]), tz), f"{eq[i]:,.2f}", f"{dd[i] * 100:.2f}%", f"{pos[i]:,.4f}")
    foot = Text(f"final equity {eq[-1]!r} (computed again; identical to the stored result); lowest drawdown "
                f"{dd.min() * 100:.2f}%. Export all rows with --format csv|json|parquet.", style="dim") if n else Text("")
    return Group(t, foot)


def render_task(rec: dict[str, Any], trades: Sequence[dict[str, Any]] | None) -> Any:
    from rich.console import Group
    from rich.table import Table

    t = Table(title=f"{rec['symbol']} {_params_text(rec['params'])} ({rec['status']})", title_justify="left")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for m in (*METRICS, *(m for m in OPTIONAL_METRICS if m in rec["metrics"])):
        t.add_row(m, _fmt(m, rec["metrics"].get(m)))
    parts: list[Any] = [t]
    if trades is not None:
        from rich import box

        shown = min(len(trades), 200)
        daily = all(r[c][11:16] in ("", "00:00") for r in trades[:shown] for c in ("entry_time", "exit_time"))
        tt = Table(title=f"{len(trades)} trades" + (f" (the first {shown}; --format csv for all, with fees)"
                                                   if shown < len(trades) else " (--format csv adds fees)"),
                   title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        with_symbol = bool(trades) and "symbol" in trades[0]
        if with_symbol:
            tt.add_column("symbol", no_wrap=True)
        tt.add_column("entry", no_wrap=True)
        tt.add_column("exit", overflow="fold")  # a position held overnight wraps its date onto two lines
        for c in ("side", "size", "in", "out", "pnl", "return", "bars"):
            tt.add_column(c, justify="right", no_wrap=True)
        for row in trades[:shown]:
            entry, leave = (row[c][:10] if daily else _short_time(row[c]) for c in ("entry_time", "exit_time"))
            if not daily and leave[:10] == entry[:10]:
                leave = leave[11:]  # the same day: its time says it all
            tt.add_row(*([row["symbol"]] if with_symbol else []), entry, leave.replace(" ", "\n"),
                       row["side"], _compact(row["size"]), _compact(row["entry_price"]), _compact(row["exit_price"]),
                       _compact(row["pnl"]), f"{row['return'] * 100:.2f}%", str(row["bars"]))
        parts.append(tt)
    return Group(*parts)


def _compact(v: float) -> str:
    """A number in at most ~7 characters: 4 significant digits, with k/M/B past ten thousand."""
    a = abs(v)
    for at, div, unit in ((1e9, 1e9, "B"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if a >= at:
            return f"{v / div:.4g}{unit}"
    return f"{v:.4g}" if a >= 1 or a == 0 else f"{v:.3g}"


def _short_time(iso: str) -> str:
    """``2020-03-02T14:31:00Z`` / ``...-05:00`` → ``2020-03-02 14:31`` (the zone is the command's --tz)."""
    return iso[:10] + " " + iso[11:16]


def _status_style(status: str) -> str:
    return {"done": "green", "failed": "red", "interrupted": "yellow", "running": "cyan"}.get(status, "")

"""Reports on a run: the rows of the output contract, exports, and rich renderables for the terminal.

Only this module and ``backtest.cli`` import rich; the functions that build rows and
exports do not, so notebooks can use them without a terminal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backtest import paths
from backtest.catalog import METRICS, Catalog
from backtest.errors import UsageError, did_you_mean

LOWER_IS_BETTER = {"max_drawdown_duration", "volatility"}
KEY_METRICS = ("total_return", "sharpe", "max_drawdown", "trades", "win_rate")
TRADE_COLUMNS = ("entry_time", "exit_time", "side", "size", "entry_price", "exit_price", "pnl", "return", "fees", "bars")


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
            "metrics": {m: _clean(r[m]) for m in METRICS} if r["status"] == "done" else {},
        }
        if r["status"] == "failed":
            rec["error"] = r["error"]
        rec["cached"] = bool(r["cached"])
        out.append(rec)
    return run, out


def contract_json(records: Sequence[dict[str, Any]]) -> str:
    """The output contract: one JSON array, one object per task."""
    rows = []
    for r in records:
        row = {"key": r["key"], "symbol": r["symbol"], "params": r["params"], "status": r["status"],
               "metrics": r["metrics"]}
        if "error" in r:
            row["error"] = r["error"]
        rows.append(row)
    return json.dumps(rows, allow_nan=False)


def flat_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    names = sorted({k for r in records for k in r["params"]})
    rows = []
    for r in records:
        row: dict[str, Any] = {"key": r["key"], "symbol": r["symbol"], "status": r["status"]}
        for n in names:
            row[f"param_{n}"] = r["params"].get(n)
        for m in METRICS:
            row[m] = r["metrics"].get(m)
        row["error"] = r.get("error")
        rows.append(row)
    return rows


def load_run(run_id: str, root: Path | str | None = None) -> Any:
    """A run's per-task results as a pyarrow Table (``.to_pandas()`` for a DataFrame)."""
    import pyarrow as pa

    _, records = task_records(run_id, Path(root) if root else None)
    return pa.Table.from_pylist(flat_rows(records))


def check_sort(metric: str) -> str:
    if metric not in METRICS:
        raise UsageError(f'unknown metric "{metric}" for --sort.{did_you_mean(metric, METRICS)} Known: {", ".join(METRICS)}')
    return metric


def ranked(records: Sequence[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Done tasks, best first by ``metric`` (missing values last)."""
    sign = 1 if metric in LOWER_IS_BETTER else -1
    done = [r for r in records if r["status"] == "done"]
    return sorted(done, key=lambda r: (r["metrics"].get(metric) is None, sign * (r["metrics"].get(metric) or 0.0)))


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


def select_task(records: Sequence[dict[str, Any]], symbol: str | None, params: dict[str, str]) -> list[dict[str, Any]]:
    """Tasks matching --symbol and --params (values compared as text, booleans as true/false)."""
    def fmt(v: Any) -> str:
        return str(v).lower() if isinstance(v, bool) else str(v)

    out = []
    for r in records:
        if symbol and r["symbol"] != symbol.upper():
            continue
        if any(k not in r["params"] or fmt(r["params"][k]) != fmt(v) for k, v in params.items()):
            continue
        out.append(r)
    if params:
        known = {k for r in records for k in r["params"]}
        for k in params:
            if k not in known:
                raise UsageError(f'unknown parameter "{k}" in --params.{did_you_mean(k, known)}')
    return out


def trades_rows(key: str, root: Path | None = None) -> list[dict[str, Any]]:
    import numpy as np

    from backtest.store.results import ResultStore

    rec = ResultStore(root or paths.root()).read(key)
    t = rec.trades
    rows = []
    for i in range(t.shape[0]):
        row: dict[str, Any] = {}
        for c in TRADE_COLUMNS:
            v = t[c][i]
            if c.endswith("_time"):
                row[c] = str(np.datetime64(int(v), "ns")) + "Z"
            elif c == "side":
                row[c] = "long" if v > 0 else "short"
            else:
                row[c] = v.item()
        rows.append(row)
    return rows


def write_rows(rows: Sequence[dict[str, Any]], fmt: str, out: Path | None) -> str | None:
    """csv / parquet / json of flat rows; returns text for stdout when ``out`` is None (csv, json)."""
    import pyarrow as pa

    if fmt == "json":
        text = json.dumps([{k: _clean(v) for k, v in r.items()} for r in rows], allow_nan=False)
    elif fmt == "csv":
        import io

        import pyarrow.csv as pacsv

        buf = io.BytesIO()
        tbl = pa.Table.from_pylist(list(rows)) if rows else pa.table({})
        pacsv.write_csv(tbl, buf)
        text = buf.getvalue().decode()
    elif fmt == "parquet":
        if out is None:
            raise UsageError("--format parquet needs --out FILE")
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(list(rows)), out)
        return None
    else:
        raise UsageError(f'unknown format "{fmt}"; use table, csv, json or parquet')
    if out is not None:
        out.write_text(text)
        return None
    return text


# rich renderables -------------------------------------------------------------------------------


def _fmt(metric: str, v: Any) -> str:
    if v is None:
        return "–"
    if metric in ("trades", "max_drawdown_duration"):
        return f"{v:,.0f}"
    if metric in ("total_return", "cagr", "volatility", "max_drawdown", "exposure", "win_rate", "best_trade",
                  "worst_trade", "avg_trade", "buy_and_hold_return"):
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


def render_run(run: dict[str, Any], records: Sequence[dict[str, Any]], sort: str, top: int) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    done = [r for r in records if r["status"] == "done"]
    failed = [r for r in records if r["status"] == "failed"]
    pending = int(run["tasks"] or 0) - len(records)
    head = Text.assemble(
        (f"run {run['run_id']}", "bold"), f"  {run['strategy']}  ", (run["status"], _status_style(run["status"])),
        f"  {len(done)} done ({sum(r['cached'] for r in done)} cached), {len(failed)} failed",
        f", {pending} not run" if pending > 0 else "",
    )
    vary = _varying(records)
    fixed = {k: v for k, v in (records[0]["params"].items() if records else ()) if k not in vary}
    if fixed:
        head.append(f"\nfixed: {_params_text(fixed)}", style="dim")
    cols = ("symbol", "params", *dict.fromkeys((sort, *KEY_METRICS)))
    board = Table(title=f"top {min(top, len(done))} by {sort}", title_justify="left")
    for c in cols:
        board.add_column(c, justify="left" if c in ("symbol", "params") else "right", no_wrap=c == "params")
    for r in ranked(records, sort)[:top]:
        board.add_row(r["symbol"], _params_text(r["params"], vary), *(_fmt(m, r["metrics"].get(m)) for m in cols[2:]))
    best = Table(title=f"best parameters per symbol (by {sort})", title_justify="left")
    for c in ("symbol", "params", sort, "total_return", "buy_and_hold_return"):
        best.add_column(c, justify="left" if c in ("symbol", "params") else "right")
    for r in best_per_symbol(records, sort):
        best.add_row(r["symbol"], _params_text(r["params"], vary), _fmt(sort, r["metrics"].get(sort)),
                     _fmt("total_return", r["metrics"].get("total_return")),
                     _fmt("buy_and_hold_return", r["metrics"].get("buy_and_hold_return")))
    summ = Table(title=f"across {len(done)} tasks", title_justify="left")
    for c in ("metric", "min", "25%", "median", "75%", "max"):
        summ.add_column(c, justify="left" if c == "metric" else "right")
    for m, q in summary(records):
        summ.add_row(m, *(_fmt(m, v) for v in q))
    parts: list[Any] = [head, board, best, summ]
    if failed:
        fail = Table(title=f"{len(failed)} failed (bt logs {run['run_id']} for tracebacks)", title_justify="left")
        for c in ("symbol", "params", "error"):
            fail.add_column(c)
        for r in failed[:20]:
            fail.add_row(r["symbol"], _params_text(r["params"], vary), r.get("error") or "")
        parts.append(fail)
    return Group(*parts)


def render_task(rec: dict[str, Any], trades: Sequence[dict[str, Any]] | None) -> Any:
    from rich.console import Group
    from rich.table import Table

    t = Table(title=f"{rec['symbol']} {_params_text(rec['params'])} ({rec['status']})", title_justify="left")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for m in METRICS:
        t.add_row(m, _fmt(m, rec["metrics"].get(m)))
    parts: list[Any] = [t]
    if trades is not None:
        tt = Table(title=f"{len(trades)} trades", title_justify="left")
        for c in TRADE_COLUMNS:
            tt.add_column(c, justify="right")
        for row in trades[:200]:
            tt.add_row(*(f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in TRADE_COLUMNS))
        parts.append(tt)
    return Group(*parts)


def _status_style(status: str) -> str:
    return {"done": "green", "failed": "red", "interrupted": "yellow", "running": "cyan"}.get(status, "")


def render_runs(runs: Sequence[dict[str, Any]]) -> Any:
    import datetime as dt

    from rich.table import Table

    t = Table(title="runs, newest first", title_justify="left", box=None, pad_edge=False, padding=(0, 1))
    for c in ("run id", "when", "strategy", "tasks", "new", "cached", "failed", "status", "secs"):
        t.add_column(c, justify="right" if c in ("tasks", "new", "cached", "failed", "secs") else "left",
                     no_wrap=True, min_width=len(c) if c != "run id" else max(len(r["run_id"]) for r in runs))
    for r in runs:
        when = dt.datetime.fromtimestamp(r["created"]).strftime("%m-%d %H:%M")
        secs = f"{r['seconds']:.1f}" if r["seconds"] is not None else "–"
        t.add_row(r["run_id"], when, (r["strategy"] or "")[:14], str(r["tasks"]), str(r["computed"]), str(r["cached"]),
                  str(r["failed"]), f"[{_status_style(r['status'])}]{r['status']}[/]", secs)
    return t

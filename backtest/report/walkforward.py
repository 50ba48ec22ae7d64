"""The report of a walk-forward run: per symbol, its folds, the stitched out-of-sample result
beside the stitched in-sample result of the same chosen sets, and the walk-forward efficiency.

Everything is derived from the run's recorded job and its tasks' metrics: each fold's choice is
made again by the same rule (``walkforward.choose``) from the in-sample results, which gives the
choice the run made. The stitched out-of-sample equity chains the folds' test curves by their
returns (fold k+1 starts where fold k ended); the curves are re-derived (``report.equity``), each
checked bit for bit against its stored result.

- Walk-forward efficiency of a fold: the annualised out-of-sample return (``cagr`` of its test)
  over the annualised in-sample return of the chosen set (``cagr`` of its training); overall:
  the stitched out-of-sample ``cagr`` over the mean in-sample ``cagr`` of the chosen sets. None
  where the in-sample return is not positive.
- In-sample beside it: the chosen sets' training curves, chained the same way, with the same
  metrics: what the optimization saw, against what it then got.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backtest.walkforward import Fold, WalkForward, choose, fmt_day


@dataclass
class FoldRow:
    symbol: str
    fold: int  # 1-based
    train_from: str
    train_to: str
    test_from: str
    test_to: str
    params: dict[str, Any] | None  # None: no eligible set, or its training is not all recorded
    train_metrics: dict[str, Any]
    test_metrics: dict[str, Any]
    test_key: str | None = None
    train_key: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "fold": self.fold, "train_from": self.train_from, "train_to": self.train_to,
                "test_from": self.test_from, "test_to": self.test_to, "params": self.params,
                "train_metrics": self.train_metrics, "test_metrics": self.test_metrics}


@dataclass
class SymbolResult:
    symbol: str
    folds: list[FoldRow]
    metrics: dict[str, Any] = field(default_factory=dict)  # stitched out-of-sample
    in_sample: dict[str, Any] = field(default_factory=dict)  # the chosen sets' training, stitched
    efficiency: float | None = None
    fold_efficiency: list[float | None] = field(default_factory=list)
    changes: int = 0
    select: str = "sharpe"  # the metric that chose the sets
    curve: Any = None  # (ts, stitched out-of-sample equity) for charts
    in_curve: Any = None  # (ts, stitched in-sample equity)

    def to_json(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "metrics": self.metrics, "in_sample_metrics": self.in_sample,
                "efficiency": _clean(self.efficiency),
                "fold_efficiency": [_clean(e) for e in self.fold_efficiency], "param_changes": self.changes,
                "folds": len(self.folds)}


@dataclass
class WfoView:
    wf: WalkForward
    folds: list[Fold]
    rows: list[FoldRow]

    def symbols(self) -> list[str]:
        return list(dict.fromkeys(r.symbol for r in self.rows))


def _clean(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _outcome(rec: dict[str, Any] | None) -> tuple[dict[str, float] | None, float]:
    if rec is None or rec["status"] != "done":
        return None, 0.0
    metrics = {k: v for k, v in rec["metrics"].items() if v is not None}
    return metrics, float(metrics.get("trades") or 0.0)


def view(run: dict[str, Any], records: list[dict[str, Any]], root: Path) -> WfoView | None:
    """The walk-forward view of a run, or None for a plain run."""
    from backtest.plan import make_tasks
    from backtest.store.archive import load_job, run_windows

    spec = load_job(root, run)
    if "walk_forward" not in spec:
        return None
    wf = WalkForward.from_json(spec["walk_forward"])
    folds = [Fold(i, *f) for i, f in enumerate(spec["walk_forward"]["folds"])]
    by_key = {r["key"]: r for r in records}
    train: dict[int, Any] = {}
    test: dict[int, Any] = {}
    for role, fold, job, parts in run_windows(root, run):
        (train if role == "train" else test)[fold] = (job, parts)
    rows: list[FoldRow] = []
    for f in folds:
        if f.index not in train or f.index not in test:
            continue
        job, parts = train[f.index]
        grid = _by_symbol(make_tasks(job, parts))
        tjob, tparts = test[f.index]
        tested = _by_symbol(make_tasks(tjob, tparts))
        for symbol, tasks in grid.items():
            if symbol not in tested or len(tasks) != len(job.params_list):
                continue
            outcomes = [_outcome(by_key.get(t.key)) for t in tasks]
            recorded = all(t.key in by_key for t in tasks)
            index = choose(outcomes, wf.select, wf.min_trades) if recorded else None
            dates = (fmt_day(f.train_from), fmt_day(f.train_to), fmt_day(f.test_from), fmt_day(f.test_to))
            if index is None:
                rows.append(FoldRow(symbol, f.index + 1, *dates, None, {}, {}))
                continue
            oos = tested[symbol][index]
            rec = by_key.get(oos.key)
            test_metrics = rec["metrics"] if rec is not None and rec["status"] == "done" else {}
            rows.append(FoldRow(symbol, f.index + 1, *dates, tasks[index].params, by_key[tasks[index].key]["metrics"],
                                test_metrics, oos.key if test_metrics else None, tasks[index].key))
    return WfoView(wf, folds, rows)


def _by_symbol(tasks: list[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for t in tasks:
        out.setdefault(t.symbol, []).append(t)
    return out


def stitched(run: dict[str, Any], v: WfoView, records: list[dict[str, Any]], root: Path,
             symbols: list[str] | None = None) -> list[SymbolResult]:
    """Per symbol: the stitched out-of-sample metrics, efficiency and parameter changes (the
    out-of-sample curves are re-derived, and checked against their stored results)."""
    import numpy as np

    from backtest.engine.metrics import bars_per_year, curve_metrics
    from backtest.engine.records import METRIC_NAMES
    from backtest.engine.settings import SimSettings
    from backtest.report.equity import curves

    cash = SimSettings.from_dict(json.loads(run["settings"])).cash
    names = symbols or v.symbols()
    wanted = [k for r in v.rows if r.symbol in names and r.test_key and r.train_key for k in (r.test_key, r.train_key)]
    # one call for every curve: the run's windows are read and its tasks indexed once
    by_key = {c.key: c for c in curves(run, list(dict.fromkeys(wanted)), root, records)} if wanted else {}

    def chain(keys: list[str]) -> tuple[dict[str, Any], Any]:
        """The metrics and (ts, equity) of the curves of ``keys`` chained by their returns."""
        cs = [by_key[k] for k in keys]
        parts, trades, ts, closes = [], [], [], []
        value = cash
        exposed = 0.0
        for c in cs:
            scale = value / cash
            parts.append(c.equity * scale)
            value = float(parts[-1][-1]) if c.equity.size else value
            scaled = np.zeros(len(c.trades), [("pnl", "<f8"), ("return", "<f8"), ("bars", "<f8")])
            scaled["pnl"] = c.trades["pnl"] * scale
            scaled["return"] = c.trades["return"]
            scaled["bars"] = c.trades["bars"]
            trades.append(scaled)
            ts.append(c.ts)
            closes.append(c.close)
            exposed += (c.metrics.get("exposure") or 0.0) * c.equity.size
        equity, times, close = np.concatenate(parts), np.concatenate(ts), np.concatenate(closes)
        values = curve_metrics(equity, cash, np.concatenate(trades), round(exposed), bars_per_year(times),
                               float(close[0]), float(close[-1]), times)
        return {m: _clean(float(x)) for m, x in zip(METRIC_NAMES, values, strict=True)}, (times, equity)

    out = []
    for symbol in names:
        rows = [r for r in v.rows if r.symbol == symbol]
        res = SymbolResult(symbol, rows, select=v.wf.select)
        chosen = [r for r in rows if r.test_key and r.train_key]
        res.changes = sum(1 for a, b in zip(rows, rows[1:], strict=False) if a.params != b.params)
        res.fold_efficiency = [_ratio(r.test_metrics.get("cagr"), r.train_metrics.get("cagr")) for r in rows]
        if chosen:
            res.metrics, res.curve = chain([r.test_key for r in chosen if r.test_key])
            res.in_sample, res.in_curve = chain([r.train_key for r in chosen if r.train_key])
            in_cagr = [float(r.train_metrics["cagr"]) for r in chosen if r.train_metrics.get("cagr") is not None]
            res.efficiency = _ratio(res.metrics.get("cagr"), sum(in_cagr) / len(in_cagr) if in_cagr else None)
        out.append(res)
    return out


def _span(first: str, last: str) -> str:
    """A window as briefly as it is exact: 2015–2017 for whole years, 2018-07–2018-12 for whole
    months, else both days."""
    import calendar

    y0, m0, d0 = (int(x) for x in first.split("-"))
    y1, m1, d1 = (int(x) for x in last.split("-"))
    if (m0, d0) == (1, 1) and (m1, d1) == (12, 31):
        return f"{y0}" if y0 == y1 else f"{y0}–{y1}"
    if d0 == 1 and d1 == calendar.monthrange(y1, m1)[1]:
        return f"{first[:7]}–{last[:7]}"
    return f"{first}–{last}"


def _ratio(oos: float | None, ins: float | None) -> float | None:
    if oos is None or ins is None or not ins > 0:
        return None
    return oos / ins


def flat_rows(rows: list[FoldRow]) -> list[dict[str, Any]]:
    """One flat dict a (symbol, fold): CSV and Parquet columns."""
    names = sorted({k for r in rows for k in (r.params or {})})
    out = []
    for r in rows:
        d: dict[str, Any] = {"symbol": r.symbol, "fold": r.fold, "train_from": r.train_from, "train_to": r.train_to,
                             "test_from": r.test_from, "test_to": r.test_to}
        for n in names:
            d[f"param_{n}"] = (r.params or {}).get(n)
        for prefix, metrics in (("train_", r.train_metrics), ("test_", r.test_metrics)):
            for m, x in metrics.items():
                d[prefix + m] = x
        out.append(d)
    return out


def flat_stitched(results: list[SymbolResult]) -> list[dict[str, Any]]:
    out = []
    for r in results:
        d: dict[str, Any] = {"symbol": r.symbol, "efficiency": _clean(r.efficiency), "param_changes": r.changes}
        d.update(r.metrics)
        d.update({f"in_sample_{m}": x for m, x in r.in_sample.items()})
        out.append(d)
    return out


def render(run: dict[str, Any], v: WfoView, results: list[SymbolResult], facts: list[tuple[str, str]],
           varying_params: set[str]) -> Any:
    """The terminal report: per symbol, its folds and the stitched result."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from backtest.report import _fmt, _params_text, _status_style

    wf = v.wf
    what = (f"holdout from {wf.holdout}" if wf.holdout else
            f"walk-forward train={wf.train}, test={wf.test}, step={wf.step}, {'anchored' if wf.anchored else 'rolling'}")
    head = Text.assemble((f"run {run['run_id']}", "bold"), f"  {run['strategy']}  ",
                         (run["status"], _status_style(run["status"])),
                         f"  {what}; {len(v.folds)} folds, chosen by in-sample {wf.select}"
                         + (f" (at least {wf.min_trades} trades)" if wf.min_trades else ""))
    for label, text in facts:
        head.append(f"\n{label}: {text}", style="dim")
    parts: list[Any] = [head]
    varying = varying_params
    for res in results:
        t = Table(title=f"{res.symbol}: folds (return, sharpe, max dd: out of sample; WFE: efficiency)",
                  title_justify="left")
        for c in ("#", "train", "test", "chosen", f"IS {wf.select}", "return", "sharpe", "max dd", "WFE"):
            t.add_column(c, justify="left" if c in ("train", "test", "chosen") else "right", no_wrap=c != "chosen",
                         overflow="fold", min_width=10 if c == "chosen" else None)
        for r, eff in zip(res.folds, res.fold_efficiency, strict=True):
            chosen = _params_text(r.params, varying) if r.params is not None else "–  (none eligible)"
            t.add_row(str(r.fold), _span(r.train_from, r.train_to), _span(r.test_from, r.test_to), chosen,
                      _fmt(wf.select, r.train_metrics.get(wf.select)), _fmt("total_return", r.test_metrics.get("total_return")),
                      _fmt("sharpe", r.test_metrics.get("sharpe")), _fmt("max_drawdown", r.test_metrics.get("max_drawdown")),
                      "–" if eff is None else f"{eff:.2f}")
        parts.append(t)
        s = Table(title=f"{res.symbol}: the chosen sets, stitched", title_justify="left")
        for c in ("", "total_return", "cagr", "sharpe", "max_drawdown", "trades"):
            s.add_column(c, justify="left" if not c else "right", no_wrap=True)
        shown = ("total_return", "cagr", "sharpe", "max_drawdown", "trades")
        s.add_row("out of sample (the walk-forward's result)", *(_fmt(m, res.metrics.get(m)) for m in shown))
        s.add_row("in sample (their training windows)", *(_fmt(m, res.in_sample.get(m)) for m in shown))
        parts.append(s)
        shown_eff = "–" if res.efficiency is None else f"{res.efficiency:.2f}"
        parts.append(Text(f"walk-forward efficiency {shown_eff} (out-of-sample cagr / in-sample cagr of the chosen sets); "
                          f"the chosen parameters changed {res.changes} times in {len(res.folds)} folds", style="dim"))
    return Group(*parts)

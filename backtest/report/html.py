"""``bt report RUN --format html``: one self-contained HTML file a person can open, keep and mail.

Everything is inline (Bokeh's scripts and styles, the data, the page's own style): the file opens
with no network. Charts are Bokeh models; the page around them is a Jinja template
(``templates/report.html.j2``). Bokeh is imported only here, so ``bt --help`` and text reports
never pay for it.

What the page holds, top to bottom: what was run (strategy, source hash, symbols, range, settings,
data partitions, versions, counts); the leaderboard of every done task (sortable by any column,
filterable by symbol, with each task's key); the metric over the parameter grid (median across
symbols and one map per symbol); the metric's distribution; the best set per symbol against buy &
hold; the charts of the top tasks and of each symbol's best set (equity against buy & hold,
drawdown, price with entries and exits, returns by month or year), re-derived by running each task
again and checked bit for bit against its stored final equity; the failures.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np

from backtest.report import LOWER_IS_BETTER, _fmt, best_per_symbol, ranked
from backtest.report.equity import Curve
from backtest.report.grid import Surface
from backtest.spec import PartsFor

T = TypeVar("T")

PERCENT = {"total_return", "cagr", "volatility", "max_drawdown", "exposure", "win_rate", "best_trade", "worst_trade",
           "avg_trade", "buy_and_hold_return"}
BUCKETS = 900  # points per curve drawn: about one pixel column each at the charts' width
MAX_MARKERS = 4000  # trade markers per chart; more are thinned (evenly) and the chart says so


@dataclass
class Options:
    sort: str = "sharpe"
    metric: str | None = None  # the heatmap's metric (default: sort)
    x: str | None = None
    y: str | None = None
    charts: int = 5
    tz: str = "UTC"


@dataclass
class Charts:
    """What the equity charts draw, per charted task: small arrays and page text, no Bokeh."""

    lines: list[dict[str, Any]]  # t, equity, hold, dd, close, pos (downsampled)
    marks: list[dict[str, Any]]  # long entries: t, price
    shorts: list[dict[str, Any]]  # short entries
    exits: list[dict[str, Any]]
    labels: list[str]  # the menu's entries
    titles: list[str]  # HTML above the charts
    returns: list[str]  # HTML returns tables
    keys: list[str]


@dataclass
class Context:
    """Everything the page is made of, gathered before Bokeh is imported."""

    run: dict[str, Any]
    records: list[dict[str, Any]]
    job: Any  # backtest.spec.Job
    parts: PartsFor
    spans: dict[str, tuple[int, int]]  # symbols covering part of the range -> (first, last) bar, UTC ns
    surface: Surface | None
    opts: Options
    chart_keys: list[str] = field(default_factory=list)
    charts: Charts | None = None  # filled by ``charts_of`` (maybe in a child process)
    env: dict[str, str] = field(default_factory=dict)
    #: a walk-forward run's per-symbol results (``report.walkforward.SymbolResult``), else None
    wfo: Any = None


def gather(run_id: str, opts: Options, root: Path | None = None,
           have: tuple[dict[str, Any], list[dict[str, Any]]] | None = None) -> Context:
    """Read the run (unless ``have`` holds its row and ``task_records``), re-derive the charted
    tasks' curves, lay the metric over the grid."""
    from backtest import paths
    from backtest.data import Store
    from backtest.report import grid as gridmod
    from backtest.report import task_records
    from backtest.store.archive import run_job

    root = root or paths.root()
    run, records = have if have is not None else task_records(run_id, root)
    job, parts = run_job(root, run)
    metric = opts.metric or opts.sort
    x, y = gridmod.axes(records, opts.x, opts.y)
    best = ranked(records, metric)
    surface = gridmod.surface(records, metric, x, y, best[0]["params"]) if x and best else None
    order = ranked(records, opts.sort)
    chart_keys = [r["key"] for r in order[: opts.charts]]
    chart_keys += [r["key"] for r in best_per_symbol(records, opts.sort)]
    chart_keys = list(dict.fromkeys(chart_keys))
    spans = Store(root).short_spans(job.symbols, job.start_ns, job.end_ns)
    return Context(run, records, job, parts, spans, surface, opts, chart_keys)


def charts_of(ctx: Context, root: Path | None = None) -> tuple[Charts, dict[str, str], Any]:
    """Re-derive the charted tasks' curves (checked against their stored results) and cut them
    down for drawing; the versions that made the results; a walk-forward run's stitched results."""
    from backtest import paths
    from backtest.report import walkforward as wfr
    from backtest.report.equity import curves
    from backtest.store.results import ResultStore
    from backtest.worker import tuning

    root = root or paths.root()
    tuning.warm_up()  # the simulation kernel, loaded the lean way a worker loads it
    found = curves(ctx.run, ctx.chart_keys, root, ctx.records)
    env = ResultStore(root).read(ctx.chart_keys[0]).env if ctx.chart_keys else {}
    view = wfr.view(ctx.run, ctx.records, root)
    wfo = wfr.stitched(ctx.run, view, ctx.records, root) if view is not None else None
    return prepare_charts(found, ctx), env, wfo


# -- helpers -----------------------------------------------------------------------------------


def _local_ms(ts_ns: np.ndarray, tz: str) -> np.ndarray:
    """Milliseconds for Bokeh's datetime axes, shifted so that the axis reads wall-clock time in
    ``tz`` (Bokeh draws what it is given as UTC)."""
    ms = ts_ns.astype(np.float64) / 1e6
    if tz == "UTC" or ts_ns.size == 0:
        return ms
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(tz)
    hours = ts_ns // 3_600_000_000_000
    uniq, inv = np.unique(hours, return_inverse=True)
    offs = np.array([(dt.datetime.fromtimestamp(int(h) * 3600, dt.UTC).astimezone(zone).utcoffset()
                      or dt.timedelta(0)).total_seconds() for h in uniq]) * 1000.0
    return ms + offs[inv]


def _when(ns: int, tz: str) -> str:
    from zoneinfo import ZoneInfo

    if (ns + 1) % 86_400_000_000_000 == 0:  # a range's inclusive end: the last nanosecond of a day
        ns -= 86_400_000_000_000 - 1

    stamp = dt.datetime.fromtimestamp(ns / 1e9, dt.UTC)
    if tz != "UTC":
        stamp = stamp.astimezone(ZoneInfo(tz))
    return stamp.strftime("%Y-%m-%d %H:%M") if (stamp.hour or stamp.minute) else stamp.strftime("%Y-%m-%d")


def _params_text(p: dict[str, Any]) -> str:
    return ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in p.items())


Row = tuple[str, list[float | None], float | None]


def period_returns(curve: Curve, tz: str) -> tuple[str, list[str], list[Row]]:
    """Returns by month (rows: years, columns: months, and the year's), or by year when the
    curve spans more than 12 years. Each period's return is its last equity over the previous
    period's last (the starting cash for the first) − 1. Months are those of ``tz``."""
    if curve.ts.size == 0:
        return "month", [], []
    # calendar months of the days only (a few thousand at most), not of every minute bar
    local_ms = _local_ms(curve.ts, tz)
    days = np.floor(local_ms / 86_400_000).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, days[1:] != days[:-1]])
    day_month = days[starts].astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)
    months = np.repeat(day_month, np.diff(np.r_[starts, days.size]))
    years = months // 12
    by_year = years[-1] - years[0] >= 12
    cash = curve.buy_hold[0] if curve.buy_hold.size else float(curve.equity[0])
    if by_year:
        ends = np.flatnonzero(np.r_[years[1:] != years[:-1], True])
        prev = np.r_[cash, curve.equity[ends[:-1]]]
        rets = curve.equity[ends] / prev - 1.0
        rows: list[Row] = [(str(int(years[e]) + 1970), [], float(r)) for e, r in zip(ends, rets, strict=True)]
        return "year", [], rows
    ends = np.flatnonzero(np.r_[months[1:] != months[:-1], True])
    prev = np.r_[cash, curve.equity[ends[:-1]]]
    rets = curve.equity[ends] / prev - 1.0
    table: dict[int, list[float | None]] = {}
    year_end: dict[int, float] = {}
    year_start: dict[int, float] = {}
    for e, p, r in zip(ends, prev, rets, strict=True):
        m = int(months[e])
        yr, mo = 1970 + m // 12, m % 12
        table.setdefault(yr, [None] * 12)[mo] = float(r)
        year_start.setdefault(yr, float(p))
        year_end[yr] = float(curve.equity[e])
    names = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    months_rows: list[Row] = [(str(yr), vals, year_end[yr] / year_start[yr] - 1.0) for yr, vals in sorted(table.items())]
    return "month", names, months_rows


def _cell_colour(v: float | None) -> str:
    if v is None or not np.isfinite(v):
        return ""
    a = min(1.0, abs(v) / 0.10)  # full colour at ±10 %
    rgb = "34,139,34" if v >= 0 else "200,40,40"
    return f"background: rgba({rgb},{0.12 + 0.6 * a:.2f})"


def returns_table_html(curve: Curve, tz: str) -> str:
    kind, names, rows = period_returns(curve, tz)
    if not rows:
        return "<p>no bars</p>"
    out = ['<table class="returns"><thead><tr><th></th>']
    if kind == "month":
        out += [f"<th>{n}</th>" for n in names]
    out.append("<th>year</th></tr></thead><tbody>")
    for label, vals, total in rows:
        out.append(f"<tr><th>{label}</th>")
        for v in vals:
            out.append(f'<td style="{_cell_colour(v)}">{"" if v is None else f"{v * 100:.1f}%"}</td>')
        out.append(f'<td class="year" style="{_cell_colour(total)}">'
                   f'{"" if total is None else f"{total * 100:.1f}%"}</td></tr>')
    out.append("</tbody></table>")
    return "".join(out)


def _number_format(metric: str) -> str:
    if metric in PERCENT:
        return "0.00%"
    if metric in ("trades", "max_drawdown_duration"):
        return "0,0"
    if metric == "final_equity":
        return "0,0.00"
    return "0.000"


# -- the page ----------------------------------------------------------------------------------


def build(ctx: Context) -> str:
    """The HTML text of the report."""
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    models = {"leaderboard": _leaderboard(ctx)}
    if ctx.surface is not None:
        models["heatmap"] = _heatmap(ctx.surface, ctx)
    dist = _distribution(ctx)
    if dist is not None:
        models["distribution"] = dist
    bvb = _best_vs_hold(ctx)
    if bvb is not None:
        models["best_vs_hold"] = bvb
    if ctx.wfo:
        models["walkforward"] = _walk_forward(ctx)
    if ctx.charts is not None and ctx.charts.keys:
        models["charts"] = _task_charts(ctx)
    for name, m in models.items():
        m.name = name
    template = (Path(__file__).parent / "templates" / "report.html.j2").read_text()
    return file_html(list(models.values()), INLINE, title=f"bt report {ctx.run['run_id']}",
                     template=template, template_variables=_page_vars(ctx, set(models)))


def _page_vars(ctx: Context, present: set[str]) -> dict[str, Any]:
    from backtest.engine import SimSettings
    from backtest.version import __version__

    run, job, tz = ctx.run, ctx.job, ctx.opts.tz
    done = [r for r in ctx.records if r["status"] == "done"]
    failed = [r for r in ctx.records if r["status"] == "failed"]
    settings = SimSettings(**job.settings)
    vary = list(dict.fromkeys(k for r in ctx.records for k in r["params"]))
    grid = {k: sorted({repr(r["params"].get(k)) for r in ctx.records}) for k in vary}
    files = sorted({f for fs in ctx.parts.values() for f in fs})
    partial = [(sym, _when(a, tz), _when(b, tz)) for sym, (a, b) in sorted(ctx.spans.items())]
    first = job.start_ns if job.start_ns > 0 else None
    last = job.end_ns if job.end_ns < 2**63 - 1 else None
    curves = ctx.charts.keys if ctx.charts is not None else []
    return {
        "run": run,
        "present": present,
        "strategy": run["strategy"],
        "strategy_file": run["strategy_file"],
        "code_hash": run["code_hash"],
        "symbols": job.symbols,
        "range": (_when(first, tz) if first is not None else "the first bar",
                  _when(last, tz) if last is not None else "the last bar"),
        "tz": tz,
        "settings": [
            ("cash", f"{settings.cash:,.2f}"),
            ("commission", f"{settings.commission * 100:.4g}% of traded value"),
            ("fee", f"{settings.fee:g} per fill"),
            ("slippage", f"{settings.slippage * 100:.4g}%"),
            ("fill", settings.fill.replace("_", "-")),
            ("units", settings.units),
            ("stop loss", f"{settings.stop_loss * 100:g}%" if settings.stop_loss else "off"),
            ("take profit", f"{settings.take_profit * 100:g}%" if settings.take_profit else "off"),
            ("trailing stop", f"{settings.trailing_stop * 100:g}%" if settings.trailing_stop else "off"),
            *([("benchmark", ctx.job.benchmark)] if ctx.job.benchmark else []),
        ],
        "grid": [(k, len(v), ", ".join(x.strip("'") for x in v[:12]) + (" …" if len(v) > 12 else ""))
                 for k, v in grid.items()],
        "grid_size": len(job.params_list),
        "files": files,
        "env": ctx.env,
        "bt_version": __version__,
        "ran": dt.datetime.fromtimestamp(run["created"], dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "made": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "counts": {"tasks": len(ctx.records), "done": len(done), "computed": run["computed"], "cached": run["cached"],
                   "failed": len(failed)},
        "seconds": run["seconds"],
        "executor": run["executor"],
        "sort": ctx.opts.sort,
        "metric": ctx.opts.metric or ctx.opts.sort,
        "surface": ctx.surface,
        "partial": partial,
        "failures": [{"symbol": r["symbol"], "params": _params_text(r["params"]), "key": r["key"],
                      "error": (r.get("error") or "").splitlines()[0] if r.get("error") else ""} for r in failed],
        "curves": curves,
        "escape": html.escape,
    }


def _leaderboard(ctx: Context) -> Any:
    from bokeh.layouts import column, row
    from bokeh.models import (
        CellEditor,
        ColumnDataSource,
        CustomJS,
        DataTable,
        IndexFilter,
        NumberFormatter,
        Select,
        StringFormatter,
        TableColumn,
    )

    from backtest.catalog import METRICS

    order = ranked(ctx.records, ctx.opts.sort)
    names = list(dict.fromkeys(k for r in ctx.records for k in r["params"]))
    data: dict[str, Any] = {"rank": np.arange(1, len(order) + 1), "symbol": [r["symbol"] for r in order]}
    for n in names:
        vals = [r["params"].get(n) for r in order]
        data[f"p_{n}"] = [str(v).lower() if isinstance(v, bool) else v for v in vals]
    for m in METRICS:
        data[m] = np.array([np.nan if r["metrics"].get(m) is None else r["metrics"][m] for r in order], dtype=np.float64)
    flagged = any("eligible" in r for r in order)  # --min-trades: the tasks ranked last say why
    if flagged:
        data["eligible"] = ["yes" if r.get("eligible", True) else "no: too few trades" for r in order]
    data["key"] = [r["key"] for r in order]
    source = ColumnDataSource(data)
    editor = CellEditor()  # one shared (read-only table): Bokeh makes a model per column otherwise
    text = StringFormatter()
    formats: dict[str, Any] = {}
    cols = [TableColumn(field="rank", title="#", width=45, editor=editor, formatter=text),
            TableColumn(field="symbol", title="symbol", width=80, editor=editor, formatter=text)]
    if flagged:
        cols.append(TableColumn(field="eligible", title="eligible", width=130, editor=editor, formatter=text))
    for n in names:
        cols.append(TableColumn(field=f"p_{n}", title=n, width=70, editor=editor, formatter=text))
    shown = [ctx.opts.sort, *(m for m in METRICS if m != ctx.opts.sort)]
    for m in shown:
        f = _number_format(m)
        if f not in formats:
            formats[f] = NumberFormatter(format=f, nan_format="–", text_align="right")
        cols.append(TableColumn(field=m, title=m, width=95, editor=editor, formatter=formats[f]))
    cols.append(TableColumn(field="key", title="task key", width=480, editor=editor, formatter=text))
    view_filter = IndexFilter(list(range(len(order))))
    from bokeh.models import CDSView

    table = DataTable(source=source, columns=cols, view=CDSView(filter=view_filter), sortable=True,
                      fit_columns=False, width=1100, height=420, index_position=None)
    symbols = sorted({r["symbol"] for r in order})
    select = Select(title="symbol", value="all symbols", options=["all symbols", *symbols], width=200)
    select.js_on_change("value", CustomJS(args={"filter": view_filter, "source": source}, code="""
        const want = cb_obj.value, sym = source.data.symbol, ix = [];
        for (let i = 0; i < sym.length; i++) if (want === "all symbols" || sym[i] === want) ix.push(i);
        filter.indices = ix;
        source.change.emit();
    """))
    return column(row(select), table)


def _heatmap(s: Surface, ctx: Context) -> Any:
    from bokeh.layouts import column
    from bokeh.models import ColorBar, ColumnDataSource, HoverTool, LinearColorMapper
    from bokeh.palettes import Viridis256
    from bokeh.plotting import figure

    palette = list(reversed(Viridis256)) if s.metric in LOWER_IS_BETTER else list(Viridis256)
    finite = [a[np.isfinite(a)] for a in [s.median, *s.per_symbol.values()]]
    vals = np.concatenate(finite) if finite else np.array([])
    lo, hi = (float(np.quantile(vals, 0.02)), float(np.quantile(vals, 0.98))) if vals.size else (0.0, 1.0)
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    mapper = LinearColorMapper(palette=palette, low=lo, high=hi, nan_color="#eeeeee")
    xs = [str(v) for v in s.xs]
    fmt = "0.00%" if s.metric in PERCENT else "0.000"
    fixed = f" (others fixed at the best set's {_params_text(s.fixed)})" if s.fixed else ""

    def surface_fig(z: np.ndarray, title: str, w: int, h: int, small: bool) -> Any:
        if s.y is None:  # one varying parameter: a line over x
            p = figure(x_range=xs, width=w, height=h, title=title, toolbar_location=None if small else "right",
                       tools="hover" if not small else "")
            p.line(xs, z[0], line_width=2)
            p.scatter(xs, z[0], size=5)
            p.xaxis.axis_label = s.x
            p.yaxis.axis_label = s.metric
            return p
        ys = [str(v) for v in s.ys]
        gx, gy = np.meshgrid(np.arange(len(xs)), np.arange(len(ys)))
        n = sum((k != "").astype(int) for k in s.keys.values()) if s.keys else np.zeros(z.shape, dtype=int)
        src = ColumnDataSource({"x": [xs[i] for i in gx.ravel()], "y": [ys[j] for j in gy.ravel()],
                                "v": z.ravel(), "n": np.asarray(n).ravel()})
        p = figure(x_range=xs, y_range=ys, width=w, height=h, title=title,
                   toolbar_location=None, tools="")
        p.rect("x", "y", 1, 1, source=src, line_color=None, fill_color={"field": "v", "transform": mapper})
        if not small:
            p.add_tools(HoverTool(tooltips=[(s.x, "@x"), (s.y, "@y"), (s.metric, f"@v{{{fmt}}}"),
                                            ("median of", "@n tasks (each symbol's map names its key)")]))
            p.xaxis.axis_label, p.yaxis.axis_label = s.x, s.y
        p.grid.visible = False
        p.axis.major_label_text_font_size = "7pt" if small else "9pt"
        if small:
            p.axis.visible = False
        return p

    main = surface_fig(s.median, f"{s.metric}: median across symbols{fixed}", 720, 420, False)
    if s.y is not None:
        main.add_layout(ColorBar(color_mapper=mapper, width=12), "right")
    if len(s.per_symbol) <= 1:
        return column(main)
    return column(main, _small_multiples(s, mapper, fmt))


def _small_multiples(s: Surface, mapper: Any, fmt: str) -> Any:
    """One small map (or line) per symbol, as panels of a single figure: twenty figures would
    cost Bokeh a second to build and the browser another to draw."""
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure

    ncols = 5
    nx, ny = len(s.xs), len(s.ys)
    symbols = sorted(s.per_symbol)
    nrows = -(-len(symbols) // ncols)
    gap = 1.0
    if s.y is None:  # lines: each panel's values scaled into its box on a shared scale
        finite = np.concatenate([z[np.isfinite(z)] for z in s.per_symbol.values()] or [np.array([0.0])])
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        span = hi - lo or 1.0
        ny = 4
    xs, ys, vs, names, xv, yv, kv = [], [], [], [], [], [], []
    labels_x, labels_y, labels = [], [], []
    for k, sym in enumerate(symbols):
        col, row = k % ncols, nrows - 1 - k // ncols
        ox, oy = col * (nx + gap), row * (ny + gap + 0.6)
        z = s.per_symbol[sym]
        labels_x.append(ox)
        labels_y.append(oy + ny + 0.05)
        labels.append(sym)
        for j in range(len(s.ys)):
            for i in range(nx):
                xs.append(ox + i + 0.5)
                ys.append(oy + j + 0.5 if s.y is not None else oy + (0 if not np.isfinite(z[j, i])
                                                                        else (z[j, i] - lo) / span * ny))
                vs.append(z[j, i])
                names.append(sym)
                xv.append(str(s.xs[i]))
                yv.append(str(s.ys[j]) if s.y is not None else "")
                kv.append(str(s.keys[sym][j, i])[:16] if sym in s.keys else "")
    src = ColumnDataSource({"x": xs, "y": ys, "v": np.array(vs, dtype=np.float64), "symbol": names, "xv": xv, "yv": yv,
                            "key": kv})
    width = ncols * (nx + gap)
    height = nrows * (ny + gap + 0.6)
    px = 1000
    p = figure(width=px, height=max(160, int(px * height / width)), x_range=(-0.2, width), y_range=(-0.2, height),
               toolbar_location=None, tools="", title="each symbol (same colour scale)" if s.y is not None
               else "each symbol (same vertical scale)")
    if s.y is not None:
        p.rect("x", "y", 1, 1, source=src, line_color=None, fill_color={"field": "v", "transform": mapper})
        tips = [("symbol", "@symbol"), (s.x, "@xv"), (s.y, "@yv"), (s.metric, f"@v{{{fmt}}}"), ("task", "@key")]
    else:
        p.scatter("x", "y", source=src, size=4)
        tips = [("symbol", "@symbol"), (s.x, "@xv"), (s.metric, f"@v{{{fmt}}}"), ("task", "@key")]
    p.text(labels_x, labels_y, text=labels, text_font_size="9pt", text_baseline="bottom")
    p.add_tools(HoverTool(tooltips=tips))
    p.axis.visible = False
    p.grid.visible = False
    p.outline_line_color = None
    return p


def _distribution(ctx: Context) -> Any:
    from bokeh.models import HoverTool, Span
    from bokeh.plotting import figure

    metric = ctx.opts.metric or ctx.opts.sort
    vals = np.array([r["metrics"][metric] for r in ctx.records if r["status"] == "done"
                     and r["metrics"].get(metric) is not None], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return None
    counts, edges = np.histogram(vals, bins=min(60, max(10, int(np.sqrt(vals.size)))))
    scale = 100.0 if metric in PERCENT else 1.0
    p = figure(width=720, height=260, title=f"{metric} across {vals.size} tasks", toolbar_location=None,
               tools="")
    p.quad(top=counts, bottom=0, left=edges[:-1] * scale, right=edges[1:] * scale, fill_alpha=0.7,
           line_color="white")
    best = ranked(ctx.records, metric)[0]["metrics"][metric]
    p.add_layout(Span(location=best * scale, dimension="height", line_color="crimson", line_dash="dashed"))
    p.xaxis.axis_label = metric + (" (%)" if scale != 1 else "")
    p.yaxis.axis_label = "tasks"
    p.add_tools(HoverTool(tooltips=[("tasks", "@top")]))
    return p


def _best_vs_hold(ctx: Context) -> Any:
    from bokeh.models import ColumnDataSource, FactorRange, HoverTool
    from bokeh.plotting import figure
    from bokeh.transform import factor_cmap

    best = best_per_symbol(ctx.records, ctx.opts.sort)
    if not best:
        return None
    kinds = ["strategy", "buy & hold"]
    factors = [(r["symbol"], k) for r in best for k in kinds]
    vals = []
    for r in best:
        vals += [(r["metrics"].get("total_return") or 0.0) * 100, (r["metrics"].get("buy_and_hold_return") or 0.0) * 100]
    src = ColumnDataSource({"x": factors, "v": vals, "kind": [k for _, k in factors],
                            "params": [_params_text(r["params"]) for r in best for _ in kinds]})
    p = figure(x_range=FactorRange(*factors), width=min(1000, max(480, 60 * len(best))), height=300,
               toolbar_location=None,
               tools="", title=f"total return (%) of each symbol's best set by {ctx.opts.sort}, and buy & hold")
    p.vbar(x="x", top="v", width=0.9, source=src, line_color="white", legend_field="kind",
           fill_color=factor_cmap("x", palette=["#1f77b4", "#bbbbbb"], factors=kinds, start=1, end=2))
    p.xaxis.major_label_text_font_size = "0pt"  # the bars' kinds are in the legend; symbols label groups
    p.legend.location = "top_right"
    p.legend.orientation = "horizontal"
    p.add_tools(HoverTool(tooltips=[("", "@x"), ("total return", "@v{0.0}%"), ("params", "@params")]))
    p.xaxis.group_label_orientation = 1.0 if len(best) > 12 else 0.0
    p.xgrid.grid_line_color = None
    return p


def _walk_forward(ctx: Context) -> Any:
    """Per symbol: the stitched out-of-sample equity against the chosen sets' stitched in-sample
    equity (both from the starting cash, by bars elapsed: the in-sample windows overlap in
    time), and the chosen parameters of each fold."""
    from bokeh.layouts import column
    from bokeh.models import ColumnDataSource, DataTable, Div, HoverTool, TableColumn
    from bokeh.plotting import figure

    from backtest.report.downsample import extremes

    parts: list[Any] = []
    select = ctx.wfo[0].select if ctx.wfo else "sharpe"
    for res in ctx.wfo:
        if res.curve is None:
            parts.append(Div(text=f"<p>{html.escape(res.symbol)}: no fold had an eligible parameter set.</p>"))
            continue
        p = figure(width=900, height=260, title=f"{res.symbol}: the chosen sets, stitched", toolbar_location=None,
                   tools="", x_axis_label="bars elapsed", y_axis_label="equity")
        for (ts, eq), label, colour in ((res.curve, "out of sample", "#1f77b4"), (res.in_curve, "in sample", "#bbbbbb")):
            keep = extremes(len(eq), [eq], BUCKETS)
            src = ColumnDataSource({"x": keep, "y": eq[keep].astype(np.float32),
                                    "t": [_when(int(t), ctx.opts.tz) for t in ts[keep]]})
            p.line("x", "y", source=src, legend_label=label, color=colour, line_width=2)
        p.add_tools(HoverTool(tooltips=[("", "@t"), ("equity", "@y{0,0}")]))
        p.legend.location = "top_left"
        rows = res.folds
        src = ColumnDataSource({
            "fold": [r.fold for r in rows], "train": [f"{r.train_from} .. {r.train_to}" for r in rows],
            "test": [f"{r.test_from} .. {r.test_to}" for r in rows],
            "params": [_params_text(r.params) if r.params is not None else "none eligible" for r in rows],
            "is": [_fmt(select, r.train_metrics.get(select)) for r in rows],
            "oos": [_fmt("total_return", r.test_metrics.get("total_return")) for r in rows]})
        cols = [TableColumn(field="fold", title="fold", width=40), TableColumn(field="train", title="train"),
                TableColumn(field="test", title="test"), TableColumn(field="params", title="chosen", width=260),
                TableColumn(field="is", title=f"in-sample {select}"),
                TableColumn(field="oos", title="out-of-sample return")]
        eff = "–" if res.efficiency is None else f"{res.efficiency:.2f}"
        summary = (f"out of sample: total return {_fmt('total_return', res.metrics.get('total_return'))}, sharpe "
                   f"{_fmt('sharpe', res.metrics.get('sharpe'))}, max drawdown "
                   f"{_fmt('max_drawdown', res.metrics.get('max_drawdown'))}; in sample: total return "
                   f"{_fmt('total_return', res.in_sample.get('total_return'))}, sharpe "
                   f"{_fmt('sharpe', res.in_sample.get('sharpe'))}; walk-forward efficiency {eff}; the chosen "
                   f"parameters changed {res.changes} times in {len(rows)} folds")
        parts += [p, Div(text=f"<p class='muted'>{html.escape(summary)}</p>"),
                  DataTable(source=src, columns=cols, width=900, height=min(400, 28 * (len(rows) + 1)),
                            index_position=None)]
    return column(*parts)


def prepare_charts(curves: list[Curve], ctx: Context) -> Charts:
    """Each curve cut to what is drawn (extremes kept), its trades as markers, its menu label,
    title and returns table."""
    from backtest.report.downsample import extremes

    tz = ctx.opts.tz
    best_keys = {r["key"]: r["symbol"] for r in best_per_symbol(ctx.records, ctx.opts.sort)}
    top_keys = [r["key"] for r in ranked(ctx.records, ctx.opts.sort)[: ctx.opts.charts]]
    lines: list[dict[str, Any]] = []
    marks: list[dict[str, Any]] = []  # long entries
    shorts: list[dict[str, Any]] = []  # short entries
    exits: list[dict[str, Any]] = []
    labels, titles = [], []
    for c in curves:
        n = c.ts.size
        keep = extremes(n, [c.equity, c.close, c.drawdown], BUCKETS)
        # float32 for what is drawn (7 digits: far finer than a pixel); times need float64's ms
        lines.append({
            "t": _local_ms(c.ts[keep], tz), "equity": c.equity[keep].astype(np.float32),
            "hold": c.buy_hold[keep].astype(np.float32), "dd": (c.drawdown[keep] * 100).astype(np.float32),
            "close": c.close[keep].astype(np.float32), "pos": c.position[keep].astype(np.float32),
            "bench": (c.bench[keep] if c.bench is not None else np.full(keep.size, np.nan)).astype(np.float32),
        })  # fmt: skip
        t = c.trades
        entry_i, exit_i = t["entry_index"], t["exit_index"][t["closed"]]
        thin = ""
        if len(t) > MAX_MARKERS:
            pick = np.linspace(0, len(t) - 1, MAX_MARKERS).astype(int)
            t = t[pick]
            entry_i, exit_i = t["entry_index"], t["exit_index"][t["closed"]]
            thin = f" (markers of {MAX_MARKERS:,} of its {len(c.trades):,} trades)"
        ok_e = (entry_i >= 0) & (entry_i < n)
        ok_x = (exit_i >= 0) & (exit_i < n)
        side = t["side"][ok_e]
        e_t, e_p = _local_ms(c.ts[entry_i[ok_e]], tz), t["entry_price"][ok_e].astype(np.float32)
        marks.append({"t": e_t[side > 0], "price": e_p[side > 0]})
        shorts.append({"t": e_t[side < 0], "price": e_p[side < 0]})
        exits.append({"t": _local_ms(c.ts[exit_i[ok_x]], tz),
                      "price": t["exit_price"][t["closed"]][ok_x].astype(np.float32)})
        why = []
        if c.key in top_keys:
            why.append(f"#{top_keys.index(c.key) + 1} by {ctx.opts.sort}")
        if c.key in best_keys:
            why.append(f"best of {c.symbol}")
        m = c.metrics
        labels.append(f"{c.symbol} {_params_text(c.params)} ({', '.join(why)})")
        titles.append(
            f"<b>{html.escape(c.symbol)}</b> {html.escape(_params_text(c.params))} · "
            f"total return {_fmt('total_return', m['total_return'])} (buy &amp; hold "
            f"{_fmt('buy_and_hold_return', m['buy_and_hold_return'])}) · sharpe {_fmt('sharpe', m['sharpe'])} · "
            f"max drawdown {_fmt('max_drawdown', m['max_drawdown'])} · {int(m['trades'])} trades{thin}"
            + (f" · alpha {_fmt('alpha', m['alpha'])}, beta {_fmt('beta', m['beta'])} against {ctx.job.benchmark}"
               if ctx.job.benchmark and "beta" in m else "") + "<br>"
            f"<code>task {c.key}</code> · final equity {m['final_equity']!r}, re-derived and identical to the "
            "stored result"
        )
    returns = [returns_table_html(c, tz) for c in curves]
    return Charts(lines, marks, shorts, exits, labels, titles, returns, [c.key for c in curves])


def _task_charts(ctx: Context) -> Any:
    """One set of charts (equity and buy & hold, drawdown, price with trades) and a menu of the
    charted tasks: choosing one swaps the charts' data, so the page draws three charts, not 75."""
    from bokeh.layouts import column
    from bokeh.models import ColumnDataSource, CustomJS, Div, HoverTool, NumeralTickFormatter, Select
    from bokeh.plotting import figure

    assert ctx.charts is not None
    ch = ctx.charts
    tz = ctx.opts.tz
    lines, marks, shorts, exits = ch.lines, ch.marks, ch.shorts, ch.exits
    labels, titles, returns = ch.labels, ch.titles, ch.returns
    # every task's points in one pair of sources (a source per task costs Bokeh ~10 models each),
    # cut by offsets when a task is chosen
    all_lines, line_at = _stack(lines)
    stacked = [_stack(m) for m in (marks, shorts, exits)]
    eq = ColumnDataSource({k: v[: line_at[1]] for k, v in all_lines.items()})
    shown = [ColumnDataSource({k: v[: at[1]] for k, v in cols.items()}) for cols, at in stacked]
    xlabel = f"time ({tz})"
    p1 = figure(width=1000, height=280, x_axis_type="datetime", tools="xpan,xwheel_zoom,box_zoom,reset,save",
                active_scroll="xwheel_zoom",
                title="equity, buy & hold" + (f" and the benchmark {ctx.job.benchmark}" if ctx.job.benchmark else ""))
    p1.line("t", "equity", source=eq, line_width=1.6, legend_label="strategy")
    p1.line("t", "hold", source=eq, line_width=1.2, color="#999999", line_dash="dashed", legend_label="buy & hold")
    if ctx.job.benchmark:
        p1.line("t", "bench", source=eq, line_width=1.2, color="#ff7f0e", legend_label=f"benchmark {ctx.job.benchmark}")
    p1.legend.location = "top_left"
    p1.yaxis.formatter = NumeralTickFormatter(format="0,0")
    p1.add_tools(HoverTool(tooltips=[("time", "@t{%F %H:%M}"), ("equity", "@equity{0,0.00}"),
                                     ("buy & hold", "@hold{0,0.00}"),
                                     *([("benchmark", "@bench{0,0.00}")] if ctx.job.benchmark else []),
                                     ("position", "@pos{0,0.[0000]}")],
                           formatters={"@t": "datetime"}, mode="vline"))
    p2 = figure(width=1000, height=150, x_axis_type="datetime", x_range=p1.x_range, tools="", toolbar_location=None,
                title="drawdown (%)")
    p2.varea(x="t", y1="dd", y2=0, source=eq, fill_color="#d62728", fill_alpha=0.5)
    p3 = figure(width=1000, height=260, x_axis_type="datetime", x_range=p1.x_range, tools="",
                toolbar_location=None, title="price, entries (▲ long, ▼ short) and exits (×)")
    p3.line("t", "close", source=eq, color="#444444", line_width=1)
    for src, marker, colour, what in zip(shown, ("triangle", "inverted_triangle", "x"),
                                         ("#2ca02c", "#d62728", "#333333"), ("long entry", "short entry", "exit"),
                                         strict=True):
        r = p3.scatter("t", "price", source=src, marker=marker, color=colour, size=8, alpha=0.8)
        p3.add_tools(HoverTool(renderers=[r], tooltips=[(what, "@t{%F %H:%M}"), ("price", "@price{0,0.0000}")],
                               formatters={"@t": "datetime"}))
    p3.xaxis.axis_label = xlabel
    head = Div(text=titles[0], width=1000)
    table = Div(text=returns[0], width=1000)
    select = Select(title="task", value=labels[0], options=labels, width=700)
    select.js_on_change("value", CustomJS(
        args={"lines": ColumnDataSource(all_lines), "line_at": line_at, "eq": eq,
              "marks": [ColumnDataSource(cols) for cols, _ in stacked], "mark_at": [at for _, at in stacked],
              "shown": shown, "labels": labels, "titles": titles, "returns": returns, "head": head, "table": table},
        code="""
        const i = labels.indexOf(cb_obj.value);
        const cut = (src, at) => {
            const out = {};
            for (const [k, v] of Object.entries(src.data)) out[k] = v.slice(at[i], at[i + 1]);
            return out;
        };
        eq.data = cut(lines, line_at);
        for (let m = 0; m < shown.length; m++) shown[m].data = cut(marks[m], mark_at[m]);
        head.text = titles[i];
        table.text = returns[i];
    """))  # fmt: skip
    return column(select, head, p1, p2, p3, table)


def _import_bokeh() -> None:
    import bokeh.embed
    import bokeh.layouts
    import bokeh.models
    import bokeh.plotting  # noqa: F401


def _stack(parts: list[dict[str, Any]]) -> tuple[dict[str, Any], list[int]]:
    """Columns of several tables end to end, and where each table starts (and the last ends)."""
    at = [0]
    for p in parts:
        at.append(at[-1] + len(next(iter(p.values()))))
    out: dict[str, Any] = {}
    for k in parts[0]:
        vals = [p[k] for p in parts]
        out[k] = np.concatenate(vals) if isinstance(vals[0], np.ndarray) else [x for v in vals for x in v]
    return out, at


def write(run_id: str, out: Path, opts: Options, root: Path | None = None,
          have: tuple[dict[str, Any], list[dict[str, Any]]] | None = None) -> tuple[Path, float, int]:
    """Write the report of ``run_id`` to ``out``; (path, seconds, bytes). ``have``: the run's row
    and ``task_records`` when the caller has read them.

    The curves are re-derived in a forked child process while this one imports Bokeh (~0.7 s):
    both are CPU-bound Python, so a thread would only take turns with it."""
    from backtest.store.fsutil import atomic_write

    t0 = time.perf_counter()
    ctx = gather(run_id, opts, root, have)
    pending = _beside(lambda: charts_of(ctx, root))
    _import_bokeh()
    ctx.charts, ctx.env, ctx.wfo = pending()
    text = build(ctx)
    atomic_write(out, text.encode("utf-8"))
    return out, time.perf_counter() - t0, len(text.encode("utf-8"))


def _beside(fn: Callable[[], T]) -> Callable[[], T]:
    """Start ``fn`` in a forked child (another core) and return what waits for its result, or
    re-raises its exception. Where fork is unsafe (threads running) or unavailable, or if the
    child dies, ``fn`` runs here instead, when its result is asked for."""
    import pickle
    import tempfile
    import threading
    import warnings

    if not hasattr(os, "fork") or threading.active_count() > 1:
        return fn
    fd, name = tempfile.mkstemp(prefix="bt-report-", suffix=".pickle")
    os.close(fd)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with native threads (3.12+): none run Python here
        pid = os.fork()
    if pid == 0:  # the child: compute, leave the answer in the file, exit without cleanup
        code = 0
        try:
            try:
                answer: tuple[str, Any] = ("ok", fn())
            except BaseException as exc:  # noqa: BLE001 - the parent re-raises it
                answer = ("error", exc)
            with open(name, "wb") as f:
                pickle.dump(answer, f, protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException:  # noqa: BLE001 - nothing to report to; the parent computes instead
            code = 1
        os._exit(code)

    def wait() -> T:
        os.waitpid(pid, 0)
        try:
            with open(name, "rb") as f:
                kind, value = pickle.load(f)
        except (OSError, EOFError, pickle.UnpicklingError):
            kind, value = "lost", None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(name)
        if kind == "ok":
            return cast(T, value)
        if kind == "error":
            raise value
        return fn()

    return wait
